import { useEffect, useState } from 'preact/hooks';
import { api, enc, get } from '../api.js';
import { ErrorBox, useLoad } from '../components.jsx';
import { TEMPLATES } from '../templates.js';

/** The multipart form of POST /upload and PUT /functions/{id}. */
export function codeForm(fileName, content, fields = {}) {
  const form = new FormData();
  for (const [k, v] of Object.entries(fields)) if (v !== '' && v != null) form.append(k, String(v));
  form.append('file', content instanceof Blob ? content : new Blob([content], { type: 'text/plain' }), fileName);
  return form;
}

export function Code({ fn, version, onDeployed }) {
  const { data, error } = useLoad(() => get(`/functions/${enc(fn.functionId)}/code`), [fn.functionId, version]);
  const [path, setPath] = useState(null);
  const [draft, setDraft] = useState(null);
  const [upload, setUpload] = useState(null);
  const [deployError, setDeployError] = useState(null);
  const [deployed, setDeployed] = useState(false);
  const files = data?.files || [];
  const file = files.find((f) => f.path === path) || files[0];
  useEffect(() => {
    setDraft(null);
    setPath(null);
  }, [data]);
  const single = files.length === 1 && file?.text != null;
  const owned = Boolean(fn.owner);
  const deploy = async () => {
    setDeployError(null);
    setDeployed(false);
    try {
      const form = upload
        ? codeForm(upload.name, upload)
        : codeForm(file?.path || TEMPLATES[fn.runtime]?.file || 'main.py', draft ?? file?.text ?? '');
      await api('PUT', `/functions/${enc(fn.functionId)}`, { form });
      setDeployed(true);
      setUpload(null);
      onDeployed();
    } catch (e) {
      setDeployError(e);
    }
  };
  return (
    <section class="card">
      <header class="bar">
        <h3>Code</h3>
        <span class="grow" />
        {files.length > 1 && (
          <select name="file" value={file?.path} onChange={(e) => setPath(e.currentTarget.value)}>
            {files.map((f) => <option value={f.path}>{f.path}</option>)}
          </select>
        )}
      </header>
      <ErrorBox error={error} />
      {data && data.totalFiles > files.length && (
        <p class="note">Showing {files.length} of {data.totalFiles} files.</p>
      )}
      {file && file.text == null && <p class="muted">{file.path}: {file.size} bytes, not shown (binary or large).</p>}
      {file && file.text != null && (
        <textarea class="code" name="code" rows="16" spellcheck={false} readOnly={!single || owned}
          value={single ? (draft ?? file.text) : file.text}
          onInput={(e) => setDraft(e.currentTarget.value)} />
      )}
      {!owned && (
        <div class="bar">
          {single && <button onClick={deploy} disabled={draft == null && !upload}>Deploy this version</button>}
          <label class="inline">
            or upload a file or .zip
            <input type="file" name="upload" accept=".py,.js,.mjs,.zip" onChange={(e) => setUpload(e.currentTarget.files[0] || null)} />
          </label>
          {upload && <button onClick={deploy}>Deploy {upload.name}</button>}
          {deployed && <span class="ok-text">Deployed.</span>}
        </div>
      )}
      <ErrorBox error={deployError} />
    </section>
  );
}
