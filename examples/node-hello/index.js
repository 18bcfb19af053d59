// A Node.js function: `exports.handler`, sync or async, gets the event and
// a context; its return value (any JSON) is the result.
exports.handler = async (event, context) => {
  const name = event.name || 'world';
  console.log(`greeting ${name} in request ${context.requestId}`);
  return { message: `Hello, ${name}!`, runtime: `node ${process.versions.node}` };
};
