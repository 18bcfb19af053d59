// Infra Controller Node.js bootstrap.
//
// Runs inside every Node instance and speaks the same protocol as the Python
// bootstrap: 4-byte big-endian length + JSON over fd 3 (a private socket), so
// nothing a handler prints can corrupt it. The instance starts generic (a stem
// cell) and becomes a function's warm instance when it receives "load".
'use strict';

const fs = require('fs');
const net = require('net');
const path = require('path');
const Module = require('module');
const { pathToFileURL } = require('url');

const OUTPUT_LIMIT = 256 * 1024;
const channel = new net.Socket({ fd: 3, readable: true, writable: true });

// Frames in, handed to whoever waits for the next one.
let inbox = Buffer.alloc(0);
const frames = [];
const waiting = [];
channel.on('data', (chunk) => {
  inbox = Buffer.concat([inbox, chunk]);
  while (inbox.length >= 4) {
    const n = inbox.readUInt32BE(0);
    if (inbox.length < 4 + n) break;
    const msg = JSON.parse(inbox.subarray(4, 4 + n).toString('utf8'));
    inbox = inbox.subarray(4 + n);
    if (waiting.length) waiting.shift()(msg);
    else frames.push(msg);
  }
});
// The worker went away: nothing left to serve.
channel.on('end', () => process.exit(0));
channel.on('error', () => process.exit(0));

function nextFrame() {
  if (frames.length) return Promise.resolve(frames.shift());
  return new Promise((resolve) => waiting.push(resolve));
}

function send(msg) {
  const body = Buffer.from(JSON.stringify(msg), 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length, 0);
  channel.write(Buffer.concat([head, body]));
}

class AIError extends Error {
  constructor(message) {
    super(message);
    this.name = 'AIError';
  }
}

// One AI request at a time on the channel, even from concurrent promises.
let aiChain = Promise.resolve();
function aiCall(kind, payload) {
  const call = aiChain.then(async () => {
    send(Object.assign({}, payload, { op: 'ai', kind }));
    const reply = await nextFrame();
    if (reply.op !== 'aiReply') throw new AIError(`unexpected reply from the worker: ${reply.op}`);
    if (!reply.ok) throw new AIError(reply.error || 'the AI call failed');
    return reply.value;
  });
  aiChain = call.catch(() => {});
  return call;
}

const ai = Object.freeze({
  /** Asks the AI node's model (default: the run's modelId) to complete `prompt`; resolves to the text. */
  generate: (prompt, options = {}) => {
    const { model = null, ...rest } = options;
    return aiCall('generate', { prompt, model, options: rest });
  },
  /** Sends a chat ([{role, content}]); resolves to the assistant's message. */
  chat: (messages, options = {}) => {
    const { model = null, ...rest } = options;
    return aiCall('chat', { messages, model, options: rest });
  },
  AIError,
});

// `require('infra_ai')` works in every function without packaging anything.
const SDK_ID = '\0infra_ai';
const resolve = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  if (request === 'infra_ai' || request === 'infra-ai') return SDK_ID;
  return resolve.call(this, request, ...rest);
};
const sdkModule = new Module(SDK_ID);
sdkModule.exports = ai;
sdkModule.loaded = true;
require.cache[SDK_ID] = sdkModule;

class Capture {
  constructor() {
    this.parts = [];
    this.size = 0;
    this.dropped = 0;
  }
  write(chunk) {
    const s = typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8');
    const room = OUTPUT_LIMIT - this.size;
    if (room > 0) {
      const piece = s.slice(0, room);
      this.parts.push(piece);
      this.size += piece.length;
    }
    this.dropped += Math.max(0, s.length - Math.max(room, 0));
  }
  value() {
    const v = this.parts.join('');
    return this.dropped ? `${v}\n[truncated ${this.dropped} characters]` : v;
  }
}

const realWrite = { out: process.stdout.write, err: process.stderr.write };
function capture() {
  const out = new Capture();
  const err = new Capture();
  const sink = (c) => (chunk, encoding, cb) => {
    c.write(chunk);
    if (typeof encoding === 'function') encoding();
    else if (typeof cb === 'function') cb();
    return true;
  };
  process.stdout.write = sink(out);
  process.stderr.write = sink(err);
  return { out, err };
}
function release() {
  process.stdout.write = realWrite.out;
  process.stderr.write = realWrite.err;
}

function errorInfo(e) {
  if (e instanceof Error) {
    return { type: e.name || e.constructor.name || 'Error', message: String(e.message), traceback: e.stack || null };
  }
  return { type: 'Error', message: `the handler threw a non-Error value: ${safeString(e)}`, traceback: null };
}

function safeString(v) {
  try {
    return typeof v === 'string' ? v : JSON.stringify(v);
  } catch (_) {
    return String(v);
  }
}

function isOom(e) {
  return e instanceof RangeError && /allocation failed|out of memory/i.test(e.message);
}

function resetPeak() {
  try {
    fs.writeFileSync('/proc/self/clear_refs', '5');
  } catch (_) {
    /* not permitted here: the peak is the instance's */
  }
}

function peakBytes() {
  try {
    const m = /VmHWM:\s+(\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch (_) {
    return 0;
  }
}

// Child processes still alive (Node reaps the ones it spawned once they
// exit). Node forks only from its main (event loop) thread, so its task's
// children are all of them; reading every thread's would cost a read per
// V8/libuv thread on each invocation.
const CHILDREN = `/proc/self/task/${process.pid}/children`;
function strays() {
  try {
    return fs.readFileSync(CHILDREN, 'utf8').split(/\s+/).filter(Boolean).length;
  } catch (_) {
    return 0;
  }
}

// What an instance keeps of its start-up environment when it takes its
// function's (which is applied here, inside the sandbox, never at launch).
const BASE_ENV = ['PATH', 'HOME', 'TMPDIR', 'PWD', 'LANG', 'LD_LIBRARY_PATH'];

function become(msg) {
  // Usually the worker set the memory limit from outside (prlimit). When it
  // could not (a worker without CAP_SYS_RESOURCE) it sends the limit here:
  // a process may always lower its own, so prlimit runs as this same user.
  if (msg.memoryBytes) {
    require('child_process').execFileSync(
      'prlimit',
      ['--pid', String(process.pid), `--data=${msg.memoryBytes}`],
      { stdio: 'ignore', env: { PATH: '/usr/bin:/bin' } },
    );
  }
  if (msg.env) {
    const base = {};
    for (const k of BASE_ENV) if (k in process.env) base[k] = process.env[k];
    for (const k of Object.keys(process.env)) delete process.env[k];
    Object.assign(process.env, base, msg.env);
  }
}

function moduleFile(codeDir, module) {
  const base = path.join(codeDir, ...module.split('.'));
  for (const candidate of [`${base}.js`, `${base}.mjs`, `${base}.cjs`, path.join(base, 'index.js')]) {
    if (fs.existsSync(candidate)) return candidate;
  }
  const e = new Error(`cannot find module ${module} (${module}.js, .mjs, .cjs or ${module}/index.js) in the code`);
  e.name = 'ModuleNotFound';
  throw e;
}

async function importModule(file) {
  if (file.endsWith('.mjs')) return import(pathToFileURL(file).href);
  try {
    return require(file);
  } catch (e) {
    // A .js file in a "type": "module" package is an ES module.
    if (e && e.code === 'ERR_REQUIRE_ESM') return import(pathToFileURL(file).href);
    throw e;
  }
}

let current = null; // the invocation in progress, for errors outside its promise chain
let poisoned = false; // an error escaped between invocations: do not reuse this instance

async function load(msg) {
  const { out, err } = capture();
  const start = process.hrtime.bigint();
  try {
    become(msg);
    const mod = await importModule(moduleFile(msg.codeDir, msg.module));
    let fn = mod && mod[msg.function];
    if (typeof fn !== 'function' && mod && mod.default) fn = mod.default[msg.function];
    if (typeof fn !== 'function') {
      const e = new TypeError(`module ${msg.module} does not export a function ${msg.function}`);
      throw e;
    }
    release();
    send({ op: 'loaded', initMs: Number(process.hrtime.bigint() - start) / 1e6 });
    return fn;
  } catch (e) {
    release();
    const status = isOom(e) ? 'OOM' : 'ERROR';
    send({ op: 'loadError', status, error: errorInfo(e), stdout: out.value(), stderr: err.value() });
    return null;
  }
}

function contextOf(msg) {
  const deadline = Date.now() + msg.timeoutMs;
  return {
    requestId: msg.requestId,
    awsRequestId: msg.requestId,
    functionId: msg.functionId,
    functionName: msg.functionName || msg.functionId,
    memoryLimitInMB: msg.memoryMb,
    modelId: msg.modelId || null,
    ai,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    callbackWaitsForEmptyEventLoop: false,
  };
}

async function invoke(fn, msg) {
  const { out, err } = capture();
  resetPeak();
  const start = process.hrtime.bigint();
  let status = 'SUCCESS';
  let valueJson = 'null';
  let error = null;
  let discard = false;
  try {
    const value = await new Promise((resolve, reject) => {
      current = { reject };
      // Lambda's callback style, for handlers that take one.
      const callback = (e, v) => (e ? reject(e) : resolve(v));
      try {
        const r = fn(msg.event, contextOf(msg), callback);
        if (r && typeof r.then === 'function') r.then(resolve, reject);
        else if (fn.length < 3) resolve(r);
      } catch (e) {
        reject(e);
      }
    });
    const json = JSON.stringify(value === undefined ? null : value);
    if (json === undefined) {
      status = 'ERROR';
      error = { type: 'ResultNotSerializable', message: 'the handler returned a value that is not JSON-serializable' };
    } else {
      valueJson = json;
    }
  } catch (e) {
    if (e && e.name === 'ResultNotSerializable') {
      status = 'ERROR';
      error = errorInfo(e);
    } else {
      status = isOom(e) ? 'OOM' : 'ERROR';
      error = errorInfo(e);
      // Errors that escaped the handler's own promise chain leave unknown state behind.
      discard = Boolean(current && current.escaped);
    }
  }
  current = null;
  discard = discard || poisoned;
  const durationMs = Number(process.hrtime.bigint() - start) / 1e6;
  release();
  send({
    op: 'result',
    status,
    valueJson,
    error,
    stdout: out.value(),
    stderr: err.value(),
    durationMs,
    peakMemoryBytes: peakBytes(),
    strays: strays(),
    discard,
  });
}

// An exception thrown from a timer or an unawaited promise of the handler
// fails the invocation instead of killing the instance mid-protocol.
function escaped(e) {
  if (current) {
    current.escaped = true;
    current.reject(e);
  } else {
    poisoned = true;
  }
}
process.on('uncaughtException', escaped);
process.on('unhandledRejection', escaped);

async function main() {
  let fn = null;
  send({ op: 'ready', pid: process.pid });
  for (;;) {
    const msg = await nextFrame();
    if (msg.op === 'load') fn = await load(msg);
    else if (msg.op === 'invoke' && fn) await invoke(fn, msg);
    else send({ op: 'protocolError', message: `unexpected op ${msg.op}` });
  }
}

main();
