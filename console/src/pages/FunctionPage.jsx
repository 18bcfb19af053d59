import { useState } from 'preact/hooks';
import { api, enc, get } from '../api.js';
import { ErrorBox, useInterval, useLoad } from '../components.jsx';
import { Charts } from './Charts.jsx';
import { Code } from './Code.jsx';
import { Logs } from './Logs.jsx';
import { Run } from './Run.jsx';
import { Settings } from './Settings.jsx';

const TABS = [
  ['run', 'Run'],
  ['activity', 'Activity'],
  ['logs', 'Logs'],
  ['code', 'Code'],
  ['settings', 'Settings'],
];

export function FunctionPage({ id, tab = 'run' }) {
  // Bumped by a run, a deploy or a save: the panels that show its effect reload.
  const [version, setVersion] = useState(0);
  const bump = () => setVersion((v) => v + 1);
  const { data: fn, error, reload } = useLoad(() => get(`/functions/${enc(id)}`), [id, version]);
  useInterval(reload, 10000);
  const [deleteError, setDeleteError] = useState(null);
  const remove = async () => {
    if (!confirm(`Delete ${fn.name}? Its code and settings are removed.`)) return;
    try {
      await api('DELETE', `/functions/${enc(id)}`);
      location.hash = '#/';
    } catch (e) {
      setDeleteError(e);
    }
  };
  if (!fn) return error ? <ErrorBox error={error} /> : <p class="muted">Loading…</p>;
  return (
    <section>
      <header class="bar">
        <h2>{fn.name}</h2>
        <span class="badge">{fn.runtime}</span>
        <span class="muted">{fn.memoryMb} MB · timeout {fn.timeoutMs} ms · {fn.invocations} invocations</span>
        <span class="grow" />
        <code class="muted">{fn.functionId}</code>
        {!fn.owner && <button class="danger" onClick={remove}>Delete</button>}
      </header>
      <ErrorBox error={deleteError || error} />
      <nav class="tabs">
        {TABS.map(([t, label]) => (
          <a href={`#/fn/${enc(id)}/${t}`} class={t === tab ? 'active' : ''}>{label}</a>
        ))}
      </nav>
      {tab === 'run' && <Run fn={fn} onRan={bump} />}
      {tab === 'activity' && <Charts fn={fn} version={version} />}
      {tab === 'logs' && <Logs fn={fn} version={version} />}
      {tab === 'code' && <Code fn={fn} version={version} onDeployed={bump} />}
      {tab === 'settings' && <Settings fn={fn} onSaved={bump} />}
    </section>
  );
}
