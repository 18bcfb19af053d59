// A starting point per runtime for the editor (file name and code).
export const TEMPLATES = {
  python: {
    file: 'main.py',
    code: `def handler(event, context):
    name = event.get("name", "world")
    print(f"greeting {name}")
    return {"message": f"Hello, {name}!"}
`,
  },
  nodejs: {
    file: 'index.js',
    code: `exports.handler = async (event, context) => {
  const name = event.name ?? 'world';
  console.log(\`greeting \${name}\`);
  return { message: \`Hello, \${name}!\` };
};
`,
  },
};

export const RUNTIMES = Object.keys(TEMPLATES);
