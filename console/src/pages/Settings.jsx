import { useEffect, useState } from 'preact/hooks';
import { api, enc } from '../api.js';
import { ErrorBox } from '../components.jsx';

// The settings the console edits, by their API names (see POST /upload).
const FIELDS = [
  ['description', 'Description', 'text'],
  ['handler', 'Handler', 'text'],
  ['memoryMb', 'Memory (MB)', 'number'],
  ['timeoutMs', 'Timeout (ms)', 'number'],
  ['minWarm', 'Min warm instances', 'number'],
  ['maxRetries', 'Max retries (async)', 'number'],
];

const current = (fn) => ({
  description: fn.description,
  handler: fn.handler,
  memoryMb: fn.memoryMb,
  timeoutMs: fn.timeoutMs,
  minWarm: fn.warmPool?.minWarm ?? 0,
  maxRetries: fn.retry?.maxRetries ?? 0,
});

export function Settings({ fn, onSaved }) {
  const [values, setValues] = useState(current(fn));
  const [error, setError] = useState(null);
  const [saved, setSaved] = useState(false);
  const owned = Boolean(fn.owner);
  // What the server holds now (after a save, or a change elsewhere) shows.
  const now = JSON.stringify(current(fn));
  useEffect(() => setValues(current(fn)), [now]);
  const save = async (e) => {
    e.preventDefault();
    setError(null);
    setSaved(false);
    const before = current(fn);
    const changed = {};
    for (const [k, , type] of FIELDS) {
      if (String(values[k]) !== String(before[k])) changed[k] = type === 'number' ? Number(values[k]) : values[k];
    }
    try {
      await api('PUT', `/functions/${enc(fn.functionId)}`, { json: changed });
      setSaved(true);
      onSaved();
    } catch (err) {
      setError(err);
    }
  };
  return (
    <form class="card settings" onSubmit={save}>
      <h3>Settings</h3>
      {owned && (
        <p class="note">Owned by the Function resource <code>{fn.owner}</code>: change it there (kubectl), not here.</p>
      )}
      <div class="grid">
        {FIELDS.map(([k, label, type]) => (
          <label>
            {label}
            <input name={k} type={type} value={values[k]} disabled={owned}
              onInput={(e) => setValues({ ...values, [k]: e.currentTarget.value })} />
          </label>
        ))}
      </div>
      <p class="muted">
        Environment: {fn.envVarNames.length ? fn.envVarNames.join(', ') : 'none'} (values are never shown).
        Network: {fn.network ? 'allowed' : 'none'}.
      </p>
      {!owned && <button type="submit">Save</button>}
      {saved && <span class="ok-text"> Saved.</span>}
      <ErrorBox error={error} />
    </form>
  );
}
