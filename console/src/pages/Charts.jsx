import { useState } from 'preact/hooks';
import { enc, get } from '../api.js';
import { Chart, ErrorBox, ms, pct, useInterval, useLoad } from '../components.jsx';

const WINDOWS = [15, 60, 360, 1440];

export function Charts({ fn, version }) {
  const [minutes, setMinutes] = useState(15);
  const { data, error, reload } = useLoad(
    () => get(`/functions/${enc(fn.functionId)}/stats?minutes=${minutes}`),
    [fn.functionId, minutes, version],
  );
  useInterval(reload, 5000);
  const times = data ? data.series.map((p) => Date.parse(p.at)) : [];
  const col = (f) => (data ? data.series.map(f) : []);
  // Bars of nothing are left out, not drawn as a line along zero.
  const some = (f) => col((p) => f(p) || null);
  return (
    <section class="card">
      <header class="bar">
        <h3>Activity</h3>
        <span class="grow" />
        <select name="window" value={minutes} onChange={(e) => setMinutes(Number(e.currentTarget.value))}>
          {WINDOWS.map((m) => <option value={m}>{m < 60 ? `${m} min` : `${m / 60} h`}</option>)}
        </select>
      </header>
      <ErrorBox error={error} />
      {data && (
        <>
          <div class="figures">
            <div><span>{data.runs}</span>runs</div>
            <div><span>{ms(data.p50Ms)}</span>p50</div>
            <div><span>{ms(data.p99Ms)}</span>p99</div>
            <div><span>{pct(data.errorRate)}</span>errors</div>
            <div><span>{pct(data.coldShare)}</span>cold starts</div>
          </div>
          {!data.complete && (
            <p class="note">More runs than the newest 1,000 fall in this window: the figures cover those only.</p>
          )}
          <div class="charts">
            <Chart title={`Invocations per ${data.bucketSeconds} s`} testid="chart-invocations" bars times={times}
              series={[
                { label: 'runs', color: '#2563eb', values: some((p) => p.runs) },
                { label: 'errors', color: '#dc2626', values: some((p) => p.errors) },
              ]} />
            <Chart title="Duration (ms)" testid="chart-duration" times={times}
              series={[
                { label: 'p50', color: '#059669', values: col((p) => p.p50Ms) },
                { label: 'p99', color: '#d97706', values: col((p) => p.p99Ms) },
              ]} />
            <Chart title="Cold vs warm starts" testid="chart-starts" bars times={times}
              series={[
                { label: 'cold', color: '#7c3aed', values: some((p) => p.cold) },
                { label: 'warm', color: '#0891b2', values: some((p) => p.warm) },
              ]} />
          </div>
        </>
      )}
    </section>
  );
}
