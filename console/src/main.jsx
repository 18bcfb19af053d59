// The web console: a hash-routed Preact app over the public HTTP API.
import 'uplot/dist/uPlot.min.css';
import './style.css';
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { session } from './api.js';
import { FunctionPage } from './pages/FunctionPage.jsx';
import { Functions } from './pages/Functions.jsx';
import { NewFunction } from './pages/NewFunction.jsx';
import { SignIn } from './pages/SignIn.jsx';
import { DeadLetters, System } from './pages/System.jsx';

function useHash() {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const on = () => setHash(location.hash);
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  return hash;
}

function page(hash) {
  let parts;
  try {
    parts = hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  } catch {
    parts = []; // a malformed link shows the list
  }
  switch (parts[0]) {
    case 'fn':
      return <FunctionPage key={parts[1]} id={parts[1]} tab={parts[2]} />;
    case 'new':
      return <NewFunction />;
    case 'system':
      return <System />;
    case 'dead-letters':
      return <DeadLetters />;
    default:
      return <Functions />;
  }
}

function App() {
  const hash = useHash();
  const [signedIn, setSignedIn] = useState(Boolean(session.key()));
  // A 401 anywhere signs out (the key changed or was wrong).
  useEffect(() => {
    const t = setInterval(() => setSignedIn(Boolean(session.key())), 1000);
    return () => clearInterval(t);
  }, []);
  if (!signedIn) return <SignIn onDone={() => setSignedIn(true)} />;
  const section = hash.split('/')[1] || '';
  return (
    <>
      <nav class="top">
        <a href="#/" class="brand">Infra Controller</a>
        <a href="#/" class={section === '' || section === 'fn' ? 'active' : ''}>Functions</a>
        <a href="#/system" class={section === 'system' ? 'active' : ''}>Workers</a>
        <a href="#/dead-letters" class={section === 'dead-letters' ? 'active' : ''}>Dead letters</a>
        <span class="grow" />
        <a href="/openapi.json">API</a>
        <button class="link" onClick={() => { session.signOut(); setSignedIn(false); }}>Sign out</button>
      </nav>
      <main>{page(hash)}</main>
    </>
  );
}

render(<App />, document.getElementById('app'));
window.__consoleReady = performance.now();
