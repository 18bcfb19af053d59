import { useState } from 'preact/hooks';
import { api, session } from '../api.js';
import { ErrorBox } from '../components.jsx';

export function SignIn({ onDone }) {
  const [key, setKey] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      // Any authenticated read proves the key.
      await api('GET', '/functions', { key });
      session.signIn(key);
      onDone();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <form class="signin card" onSubmit={submit}>
      <h1>Infra Controller</h1>
      <p class="muted">Sign in with the API key (kept in this browser tab's session only).</p>
      <label>
        API key
        <input type="password" name="apiKey" autocomplete="current-password" value={key}
          onInput={(e) => setKey(e.currentTarget.value)} required autofocus />
      </label>
      <button type="submit" disabled={busy}>Sign in</button>
      <ErrorBox error={error} />
    </form>
  );
}
