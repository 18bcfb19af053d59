// Starts the fauxqs emulator bound to 127.0.0.1 only (its CLI binds every
// interface). FAUXQS_APP: absolute path of fauxqs's dist/app.js.
const { buildApp } = await import(process.env.FAUXQS_APP);
const app = buildApp({ logger: false });
await app.listen({ port: Number(process.env.FAUXQS_PORT), host: "127.0.0.1" });
