import { useEffect, useRef, useState } from 'preact/hooks';
import { api, enc, TERMINAL } from '../api.js';
import { ErrorBox, Json, ms } from '../components.jsx';

const sleep = (t) => new Promise((r) => setTimeout(r, t));
const FOLLOW_MS = 10 * 60 * 1000;

/** A finished job (sync answer or /status): outcome, result, output. */
export function JobView({ job }) {
  const ok = job.status === 'SUCCESS';
  return (
    <div class={`job ${ok ? 'ok' : 'failed'}`} data-testid="job" data-status={job.status}>
      <div class="bar">
        <span class={`badge ${ok ? 'ok' : TERMINAL.has(job.status) ? 'bad' : 'wait'}`}>{job.status}</span>
        {job.durationMs != null && <span>{ms(job.durationMs)}</span>}
        {job.coldStart != null && <span class="muted">{job.coldStart ? 'cold start' : 'warm'}</span>}
        <span class="grow" />
        <span class="rid">request id <code>{job.jobId || job.requestId}</code></span>
      </div>
      {job.error && (
        <div class="error" role="alert">
          <strong>{job.error.type}: {job.error.message}</strong>
          {job.error.traceback && <pre>{job.error.traceback}</pre>}
        </div>
      )}
      {TERMINAL.has(job.status) && (
        <>
          <h4>Result</h4>
          <Json value={job.result ?? null} />
        </>
      )}
      {job.stdout && (<><h4>stdout</h4><pre class="out">{job.stdout}</pre></>)}
      {job.stderr && (<><h4>stderr</h4><pre class="out">{job.stderr}</pre></>)}
    </div>
  );
}

// Each function's last input, kept while the console is open.
const inputs = new Map();

export function Run({ fn, onRan }) {
  const [input, setInputState] = useState(inputs.get(fn.functionId) ?? '{\n  "name": "Ada"\n}');
  const setInput = (v) => {
    inputs.set(fn.functionId, v);
    setInputState(v);
  };
  const [job, setJob] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  // Following a job stops when the panel goes away.
  const mounted = useRef(true);
  useEffect(() => () => {
    mounted.current = false;
  }, []);

  const run = async (asynchronous) => {
    setError(null);
    setJob(null);
    let inputData;
    try {
      inputData = input.trim() ? JSON.parse(input) : {};
    } catch (e) {
      setError({ message: `The input is not JSON: ${e.message}` });
      return;
    }
    setBusy(true);
    try {
      const body = { functionId: fn.functionId, inputData };
      const headers = asynchronous ? { 'x-async': 'true' } : {};
      const { data } = await api('POST', '/run', { json: body, headers });
      if (!asynchronous) {
        setJob(data);
      } else {
        let current = { jobId: data.jobId, status: 'PENDING' };
        setJob(current);
        const until = Date.now() + FOLLOW_MS;
        for (let wait = 200; !TERMINAL.has(current.status); wait = Math.min(wait * 1.5, 1000)) {
          await sleep(wait);
          if (!mounted.current) return;
          if (Date.now() > until) {
            throw new Error(`job ${data.jobId} is still ${current.state || current.status} after 10 minutes: follow it with infra jobs get ${data.jobId}`);
          }
          const s = (await api('GET', `/status/${enc(data.jobId)}`)).data;
          // Unfinished: the original's {status: "pending", state}.
          current = { ...s, jobId: data.jobId, status: s.state || s.status };
          if (mounted.current) setJob(current);
        }
      }
      onRan?.();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };

  return (
    <section class="card">
      <h3>Run</h3>
      <label>
        Input (JSON)
        <textarea class="code" name="input" rows="6" spellcheck={false} value={input}
          onInput={(e) => setInput(e.currentTarget.value)} />
      </label>
      <div class="bar">
        <button onClick={() => run(false)} disabled={busy}>Run</button>
        <button class="secondary" onClick={() => run(true)} disabled={busy}>Run async</button>
        {busy && <span class="muted">running…</span>}
      </div>
      <ErrorBox error={error} />
      {job && <JobView job={job} />}
    </section>
  );
}
