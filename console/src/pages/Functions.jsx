import { useEffect, useState } from 'preact/hooks';
import { enc, get } from '../api.js';
import { ErrorBox, ms, pct, useInterval, useLoad } from '../components.jsx';

/** Each function's last hour, fetched when the set of functions changes and
 * every 30 s (logs may be off: then none). */
function useStats(functions) {
  const [stats, setStats] = useState({});
  const [tick, setTick] = useState(0);
  useInterval(() => setTick((t) => t + 1), 30000);
  const ids = (functions || []).map((f) => f.functionId).join(',');
  useEffect(() => {
    let live = true;
    for (const id of ids ? ids.split(',') : []) {
      get(`/functions/${enc(id)}/stats?minutes=60`).then(
        (s) => live && setStats((all) => ({ ...all, [id]: s })),
        () => {},
      );
    }
    return () => {
      live = false;
    };
  }, [ids, tick]);
  return stats;
}

export function Functions() {
  const { data, error, loading, reload } = useLoad(() => get('/functions'));
  const stats = useStats(data);
  useInterval(reload, 10000);
  return (
    <section>
      <header class="bar">
        <h2>Functions</h2>
        <span class="grow" />
        <button class="secondary" onClick={reload}>Refresh</button>
        <a class="button" href="#/new">New function</a>
      </header>
      <ErrorBox error={error} />
      {loading && !data && <p class="muted">Loading…</p>}
      {data && !data.length && <p class="muted">No functions yet. <a href="#/new">Deploy one</a>.</p>}
      {data?.length > 0 && (
        <table class="list" data-testid="functions">
          <thead>
            <tr>
              <th>Name</th><th>Runtime</th><th>Memory</th><th>Invocations</th>
              <th title="last hour">p50</th><th title="last hour">p99</th>
              <th title="last hour">Errors</th><th title="last hour">Cold starts</th>
              <th>Owner</th><th>Code</th>
            </tr>
          </thead>
          <tbody>
            {data.map((f) => {
              const s = stats[f.functionId];
              return (
                <tr>
                  <td><a href={`#/fn/${enc(f.functionId)}`}>{f.name}</a></td>
                  <td>{f.runtime}{f.style === 'program' ? ' (program)' : ''}</td>
                  <td>{f.memoryMb} MB</td>
                  <td>{f.invocations}</td>
                  <td>{ms(s?.p50Ms)}</td>
                  <td>{ms(s?.p99Ms)}</td>
                  <td data-col="errors">{s ? pct(s.errorRate) : '–'}</td>
                  <td>{s ? pct(s.coldShare) : '–'}</td>
                  <td>{f.owner || <span class="muted">API</span>}</td>
                  <td title={f.sha256}><code>{f.sha256.slice(0, 8)}</code></td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
    </section>
  );
}
