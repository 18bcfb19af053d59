import { useState } from 'preact/hooks';
import { api, enc } from '../api.js';
import { ErrorBox } from '../components.jsx';
import { RUNTIMES, TEMPLATES } from '../templates.js';
import { codeForm } from './Code.jsx';

export function NewFunction() {
  const [name, setName] = useState('');
  const [runtime, setRuntime] = useState('python');
  const [memoryMb, setMemory] = useState(128);
  const [code, setCode] = useState(TEMPLATES.python.code);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const pick = (r) => {
    // The editor follows the runtime while it still holds a template.
    if (Object.values(TEMPLATES).some((t) => t.code === code)) setCode(TEMPLATES[r].code);
    setRuntime(r);
  };
  const submit = async (e) => {
    e.preventDefault();
    setError(null);
    setBusy(true);
    try {
      const form = codeForm(TEMPLATES[runtime].file, code, { name, runtime, memoryMb });
      const { data } = await api('POST', '/upload', { form });
      const id = data.functionId || data.function?.functionId;
      location.hash = `#/fn/${enc(id)}`;
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <form class="card" onSubmit={submit}>
      <h2>New function</h2>
      <div class="grid">
        <label>Name<input name="name" value={name} required onInput={(e) => setName(e.currentTarget.value)} /></label>
        <label>
          Runtime
          <select name="runtime" value={runtime} onChange={(e) => pick(e.currentTarget.value)}>
            {RUNTIMES.map((r) => <option value={r}>{r}</option>)}
          </select>
        </label>
        <label>Memory (MB)<input name="memoryMb" type="number" value={memoryMb} onInput={(e) => setMemory(e.currentTarget.value)} /></label>
      </div>
      <label>
        {TEMPLATES[runtime].file}
        <textarea class="code" name="code" rows="14" spellcheck={false} value={code} onInput={(e) => setCode(e.currentTarget.value)} />
      </label>
      <button type="submit" disabled={busy}>Deploy</button>
      <ErrorBox error={error} />
    </form>
  );
}
