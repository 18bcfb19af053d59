import { useState } from 'preact/hooks';
import { enc, get } from '../api.js';
import { ErrorBox, Json, time, useInterval, useLoad } from '../components.jsx';

const SINCE = [
  ['all', 'any time', 0],
  ['15m', 'last 15 min', 15],
  ['1h', 'last hour', 60],
  ['24h', 'last 24 h', 1440],
];

export function Logs({ fn, version }) {
  const [status, setStatus] = useState('all');
  const [text, setText] = useState('');
  const [open, setOpen] = useState(null);
  const [detail, setDetail] = useState(null);
  const [since, setSince] = useState('all');
  const { data, error, reload } = useLoad(() => {
    const minutes = SINCE.find(([k]) => k === since)[2];
    const from = minutes ? `&startTime=${enc(new Date(Date.now() - minutes * 60_000).toISOString())}` : '';
    return get(`/functions/${enc(fn.functionId)}/logs?limit=200${from}`);
  }, [fn.functionId, version, since]);
  useInterval(reload, 5000);
  const shown = (data || []).filter(
    (l) =>
      (status === 'all' || (status === 'ok' ? l.status === 'SUCCESS' : l.status !== 'SUCCESS')) &&
      (!text || l.message.includes(text) || l.requestId.includes(text)),
  );
  const show = async (l) => {
    setOpen(l.requestId);
    setDetail(null);
    try {
      setDetail(await get(`/functions/${enc(fn.functionId)}/logs/${enc(l.requestId)}`));
    } catch (e) {
      setDetail({ failed: e });
    }
  };
  return (
    <section class="card">
      <header class="bar">
        <h3>Logs</h3>
        <span class="grow" />
        <select name="since" value={since} onChange={(e) => setSince(e.currentTarget.value)}>
          {SINCE.map(([k, label]) => <option value={k}>{label}</option>)}
        </select>
        <select name="status" value={status} onChange={(e) => setStatus(e.currentTarget.value)}>
          <option value="all">all runs</option>
          <option value="ok">succeeded</option>
          <option value="failed">failed</option>
        </select>
        <input name="filter" placeholder="text or request id" value={text}
          onInput={(e) => setText(e.currentTarget.value)} />
        <button class="secondary" onClick={reload}>Refresh</button>
      </header>
      <ErrorBox error={error} />
      {data && !shown.length && <p class="muted">No runs match.</p>}
      {shown.length > 0 && (
        <table class="list" data-testid="logs">
          <thead>
            <tr><th>Finished</th><th>Status</th><th>Duration</th><th>Memory</th><th>Start</th><th>Output</th><th>Request id</th></tr>
          </thead>
          <tbody>
            {shown.map((l) => (
              <>
                <tr class="clickable" onClick={() => show(l)}>
                  <td>{time(l.timestamp)}</td>
                  <td><span class={`badge ${l.status === 'SUCCESS' ? 'ok' : 'bad'}`}>{l.status}</span></td>
                  <td>{l.duration} ms</td>
                  <td>{l.memory} MB</td>
                  <td>{l.coldStart ? 'cold' : 'warm'}</td>
                  <td class="message">{l.error ? `${l.error.type}: ${l.error.message}` : l.message}</td>
                  <td><code>{l.requestId}</code></td>
                </tr>
                {open === l.requestId && (
                  <tr class="detail">
                    <td colspan="7">
                      {!detail && <span class="muted">Loading…</span>}
                      {detail?.failed && <ErrorBox error={detail.failed} />}
                      {detail && !detail.failed && (
                        <>
                          {detail.stdout && (<><h4>stdout</h4><pre class="out">{detail.stdout}</pre></>)}
                          {detail.stderr && (<><h4>stderr</h4><pre class="out">{detail.stderr}</pre></>)}
                          {detail.error && <Json value={detail.error} />}
                        </>
                      )}
                    </td>
                  </tr>
                )}
              </>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
