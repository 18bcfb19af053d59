// The console's one way to the HTTP API: the key from the browser session,
// JSON in and out, and every refusal as an ApiError with the API's message
// and the request id to quote.

const KEY = 'infra.apiKey';

export const session = {
  key: () => sessionStorage.getItem(KEY),
  signIn: (key) => sessionStorage.setItem(KEY, key),
  signOut: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, body, requestId) {
    const detail = body.message && body.message !== body.error ? `: ${body.message}` : '';
    super(`${body.error || `HTTP ${status}`}${detail}`);
    this.status = status;
    this.details = body.details || [];
    this.requestId = requestId;
  }
}

export async function api(method, path, { json, form, headers = {}, key } = {}) {
  const h = { 'x-api-key': key ?? session.key() ?? '', ...headers };
  let body;
  if (json !== undefined) {
    h['content-type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  let res;
  try {
    res = await fetch(path, { method, headers: h, body });
  } catch (e) {
    // fetch refuses a header value it cannot send before any request is made.
    const why = /header|ISO-8859-1/i.test(e.message)
      ? 'the key holds characters an HTTP header cannot carry'
      : `the API cannot be reached (${e.message})`;
    throw new ApiError(0, { error: why }, null);
  }
  const requestId = res.headers.get('x-request-id');
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!res.ok) {
    const err = data && typeof data === 'object' ? data : { error: String(data || res.statusText) };
    if (res.status === 401 && !key) session.signOut();
    throw new ApiError(res.status, err, err.requestId || requestId);
  }
  return { data, requestId, status: res.status };
}

export const get = (path) => api('GET', path).then((r) => r.data);
export const enc = encodeURIComponent;

export const TERMINAL = new Set(['SUCCESS', 'FAILED', 'TIMEOUT', 'OOM', 'CRASHED', 'LOST']);
