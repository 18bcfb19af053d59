import { api, get } from '../api.js';
import { ErrorBox, Fields, Meter, time, useInterval, useLoad } from '../components.jsx';
import { useState } from 'preact/hooks';

const RUNTIMES = ['python', 'nodejs', 'go', 'cpp'];
const ago = (t) => (t ? `${Math.max(0, Math.round((Date.now() - Date.parse(t)) / 1000))} s ago` : '–');

export function System() {
  const status = useLoad(() => get('/system/status'));
  const pool = useLoad(() => get('/warm-pool'));
  useInterval(() => {
    status.reload();
    pool.reload();
  }, 5000);
  const st = status.data;
  const spec = pool.data?.spec;
  const capacity = pool.data?.capacity;
  return (
    <section>
      <header class="bar">
        <h2>Workers and warm pools</h2>
        <span class="grow" />
        {st && <span class={`badge ${st.status === 'online' ? 'ok' : 'bad'}`}>{st.status}</span>}
      </header>
      <ErrorBox error={status.error || pool.error} />
      {capacity && (
        <div class="card">
          <h3>Memory</h3>
          <Meter part={capacity.reservedMb} whole={capacity.capacityMb}
            label={`${capacity.reservedMb} of ${capacity.capacityMb} MB reserved by instances on ${capacity.workers} worker(s)`} />
        </div>
      )}
      <div class="cols">
        <div class="card" data-testid="runtimes">
          <h3>Runtimes</h3>
          {spec && st && (
            <table class="list">
              <thead><tr><th>Runtime</th><th>Warm instances</th><th>Stem cells wanted</th><th>Warm memory</th><th>Slots</th></tr></thead>
              <tbody>
                {RUNTIMES.map((r) => {
                  const d = spec.runtimes[r];
                  return (
                    <tr>
                      <td>{r}</td>
                      <td>{st.pools?.[r] ?? 0}</td>
                      <td>{d ? d.stemCells : <span class="muted">not run here</span>}</td>
                      <td>{d ? `${d.warmMemoryMb} MB` : '–'}</td>
                      <td>{d ? d.slots : '–'}</td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          )}
        </div>
        <div class="card" data-testid="warm-functions">
          <h3>Kept warm (minWarm)</h3>
          {spec && !spec.functions.length && <p class="muted">No function asks for warm instances.</p>}
          {spec?.functions.length > 0 && (
            <table class="list">
              <thead><tr><th>Function</th><th>Runtime</th><th>minWarm</th><th>Memory</th><th>Owner</th></tr></thead>
              <tbody>
                {spec.functions.map((f) => (
                  <tr>
                    <td><a href={`#/fn/${encodeURIComponent(f.functionId)}`}>{f.functionId}</a></td>
                    <td>{f.runtime}</td>
                    <td>{f.minWarm}</td>
                    <td>{f.memoryMb} MB</td>
                    <td>{f.owner || '–'}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </div>
      </div>
      <div class="card" data-testid="workers">
        <h3>Workers</h3>
        {st && !st.workers?.length && <p class="muted">No worker has reported.</p>}
        {st?.workers?.length > 0 && (
          <table class="list">
            <thead>
              <tr><th>Worker</th><th>Host</th><th>Jobs</th><th>Warm</th><th>Idle / busy instances</th><th>Memory reserved</th><th>Reported</th></tr>
            </thead>
            <tbody>
              {st.workers.map((w) => (
                <tr>
                  <td><code>{w.workerId.slice(0, 8)}</code></td>
                  <td>{w.hostname}</td>
                  <td>{w.activeJobs} / {w.concurrency}</td>
                  <td>{w.warmInstances}</td>
                  <td>{w.pool ? `${w.pool.idleInstances} / ${w.pool.busyInstances}` : '–'}</td>
                  <td>
                    {w.pool ? <Meter part={w.pool.reservedMb} whole={w.pool.capacityMb} label={`${w.pool.reservedMb} / ${w.pool.capacityMb} MB`} /> : '–'}
                  </td>
                  <td>{ago(w.reportedAt)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
        {st && (
          <details>
            <summary class="muted">All of /system/status</summary>
            <Fields value={st} />
          </details>
        )}
      </div>
    </section>
  );
}

const lastError = (l) => {
  const last = l.attempts?.[l.attempts.length - 1];
  return last?.error ? `${last.error.type}: ${last.error.message}` : last?.status ?? '–';
};

export function DeadLetters() {
  const { data, error, reload } = useLoad(() => get('/dead-letters?limit=100'));
  useInterval(reload, 5000);
  const [outcome, setOutcome] = useState(null);
  const [redriveError, setRedriveError] = useState(null);
  const redrive = async (jobIds) => {
    setRedriveError(null);
    try {
      setOutcome((await api('POST', '/dead-letters/redrive', { json: jobIds ? { jobIds } : {} })).data);
      reload();
    } catch (e) {
      setRedriveError(e);
    }
  };
  const letters = data?.deadLetters || [];
  return (
    <section>
      <header class="bar">
        <h2>Dead letters</h2>
        <span class="grow" />
        <button class="secondary" onClick={reload}>Refresh</button>
        {letters.length > 0 && <button onClick={() => redrive(null)}>Redrive all</button>}
      </header>
      <ErrorBox error={error || redriveError} />
      {outcome && (
        <p class="note">
          Redriven: {outcome.redriven.length}
          {outcome.failed.length > 0 && `; not redriven: ${outcome.failed.map((f) => `${f.jobId} (${f.error})`).join(', ')}`}
        </p>
      )}
      {data && !letters.length && <p class="muted">No dead letters: every async job that failed for good would be here.</p>}
      {letters.length > 0 && (
        <table class="list">
          <thead><tr><th>Job</th><th>Function</th><th>Reason</th><th>Last error</th><th>Runs</th><th>Since</th><th /></tr></thead>
          <tbody>
            {letters.map((l) => (
              <tr>
                <td><code>{l.jobId}</code></td>
                <td><a href={`#/fn/${encodeURIComponent(l.functionId)}`}>{l.functionId}</a></td>
                <td>{l.reason}</td>
                <td class="message">{lastError(l)}</td>
                <td>{l.attempts?.length ?? '–'}</td>
                <td>{time(l.deadLetteredAt)}</td>
                <td><button class="secondary" onClick={() => redrive([l.jobId])}>Redrive</button></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
