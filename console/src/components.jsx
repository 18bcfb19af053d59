import { useEffect, useRef, useState } from 'preact/hooks';
import uPlot from 'uplot';

export function ErrorBox({ error }) {
  if (!error) return null;
  return (
    <div class="error" role="alert">
      <strong>{error.message}</strong>
      {error.details?.length > 1 && (
        <ul>{error.details.map((d) => <li>{d}</li>)}</ul>
      )}
      {error.requestId && <div class="rid">request id <code>{error.requestId}</code></div>}
    </div>
  );
}

/** Calls `f` every `ms` while mounted. */
export function useInterval(f, ms) {
  const saved = useRef(f);
  saved.current = f;
  useEffect(() => {
    const t = setInterval(() => saved.current(), ms);
    return () => clearInterval(t);
  }, [ms]);
}

/** Runs `load` on mount and when `deps` change; `reload` runs it again. */
export function useLoad(load, deps = []) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    setState((s) => ({ ...s, loading: true }));
    load().then(
      (data) => live && setState({ data, error: null, loading: false }),
      // A failed refresh keeps what was shown (and says why beside it).
      (error) => live && setState((s) => ({ data: s.data, error, loading: false })),
    );
    return () => {
      live = false;
    };
  }, [...deps, tick]);
  return { ...state, reload: () => setTick((t) => t + 1) };
}

export const ms = (v) => (v == null ? '–' : v < 10 ? `${v.toFixed(2)} ms` : `${Math.round(v)} ms`);
export const pct = (v) => (v == null ? '–' : `${(v * 100).toFixed(v > 0 && v < 0.1 ? 1 : 0)} %`);
export const time = (t) => (t ? new Date(t).toLocaleString() : '–');

/** A uPlot chart of one x series (times) and several y series. */
export function Chart({ title, times, series, bars = false, testid }) {
  const el = useRef(null);
  const plot = useRef(null);
  const points = series.length ? series[0].values.filter((v) => v != null && v !== 0).length : 0;
  useEffect(() => {
    const width = Math.max(320, el.current.clientWidth || 600);
    const opts = {
      width,
      height: 180,
      series: [
        {},
        ...series.map((s, i) => ({
          label: s.label,
          stroke: s.color,
          fill: bars ? `${s.color}55` : undefined,
          width: 2,
          spanGaps: false,
          // Two bar series stand side by side in their interval.
          paths: bars
            ? uPlot.paths.bars(series.length === 2 ? { size: [0.45, 20, 3], align: i ? 1 : -1 } : { size: [0.8, 40, 4] })
            : undefined,
          points: { show: true, size: 5 },
        })),
      ],
      axes: [{}, { size: 60 }],
      scales: { x: { time: true } },
      legend: { live: false },
    };
    const data = [times.map((t) => t / 1000), ...series.map((s) => s.values)];
    plot.current?.destroy();
    plot.current = new uPlot(opts, data, el.current);
    return () => plot.current?.destroy();
  }, [JSON.stringify([times, series.map((s) => s.values)])]);
  return (
    <figure class="chart" data-testid={testid} data-points={points}>
      <figcaption>{title}</figcaption>
      <div ref={el} />
    </figure>
  );
}

/** A bar of `part` out of `whole` (memory reserved of capacity, say). */
export function Meter({ part, whole, label }) {
  const share = whole > 0 ? Math.min(1, part / whole) : 0;
  return (
    <div class="meter" title={label}>
      <div style={{ width: `${(share * 100).toFixed(1)}%` }} />
      <span>{label}</span>
    </div>
  );
}

export function Json({ value }) {
  return <pre class="json">{typeof value === 'string' ? value : JSON.stringify(value, null, 2)}</pre>;
}

/** Any JSON object as nested definition lists (for status pages). */
export function Fields({ value }) {
  if (value == null || typeof value !== 'object') return <span>{String(value ?? '–')}</span>;
  if (Array.isArray(value)) {
    if (!value.length) return <span class="muted">none</span>;
    return <ol class="fields">{value.map((v) => <li><Fields value={v} /></li>)}</ol>;
  }
  return (
    <dl class="fields">
      {Object.entries(value).map(([k, v]) => (
        <>
          <dt>{k}</dt>
          <dd><Fields value={v} /></dd>
        </>
      ))}
    </dl>
  );
}
