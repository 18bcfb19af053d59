// Bundles the console into one directory: index.html, app-<hash>.js and
// app-<hash>.css (minified, hashed names so they can be cached for good).
// Called by the crate's build.rs from a directory holding node_modules:
// `node build.mjs SRC_DIR OUT_DIR`.
import * as esbuild from 'esbuild';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';

const [src, out] = process.argv.slice(2);
if (!src || !out) {
  console.error('usage: node build.mjs SRC_DIR OUT_DIR');
  process.exit(2);
}
mkdirSync(out, { recursive: true });
const result = await esbuild.build({
  entryPoints: { app: join(src, 'main.jsx') },
  // The packages live beside this script, not beside the sources.
  nodePaths: [resolve('node_modules')],
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['chrome111', 'firefox115', 'safari16.4'],
  jsx: 'automatic',
  jsxImportSource: 'preact',
  entryNames: '[name]-[hash]',
  outdir: out,
  metafile: true,
  legalComments: 'none',
  logLevel: 'warning',
});
const files = Object.keys(result.metafile.outputs).map((p) => basename(p));
const js = files.find((f) => f.endsWith('.js'));
const css = files.find((f) => f.endsWith('.css'));
if (!js || !css) {
  console.error(`esbuild wrote ${files.join(', ')}: expected one .js and one .css`);
  process.exit(1);
}
const html = readFileSync(join(src, 'index.html'), 'utf8').replace('%CSS%', css).replace('%JS%', js);
writeFileSync(join(out, 'index.html'), html);
