import { api, get } from '../api.js';
import { ErrorBox, Fields, time, useLoad } from '../components.jsx';
import { useState } from 'preact/hooks';

export function System() {
  const status = useLoad(() => get('/system/status'));
  const pool = useLoad(() => get('/warm-pool'));
  return (
    <section>
      <header class="bar">
        <h2>Workers and warm pools</h2>
        <span class="grow" />
        <button class="secondary" onClick={() => { status.reload(); pool.reload(); }}>Refresh</button>
      </header>
      <div class="cols">
        <div class="card" data-testid="system-status">
          <h3>System status</h3>
          <ErrorBox error={status.error} />
          {status.data && <Fields value={status.data} />}
        </div>
        <div class="card" data-testid="warm-pool">
          <h3>Warm pool</h3>
          <ErrorBox error={pool.error} />
          {pool.data && <Fields value={pool.data} />}
        </div>
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
