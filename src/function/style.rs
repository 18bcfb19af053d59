//! Telling the original platform's *program* functions from handlers, for
//! uploads that do not say (`style` absent). Pure, and conservative: a
//! function is a program only when its entry file clearly is one; anything
//! that may be a handler stays a handler (the default, warm style).
//!
//! - Python (`main.py`, or the handler's module): a program when it defines
//!   no handler — the handler's name (`handler`) appears nowhere as a word,
//!   and `main` is either absent or a `def main():` taking no parameters
//!   called under `if __name__ == "__main__":` — and it reads its input the
//!   original way: `PAYLOAD` / `PAYLOAD_FILE` or `sdk.get_input`.
//! - Node.js (`index.js`, or the handler's module): a program when it exports
//!   nothing (no `exports`, no ESM `export`) and reads `PAYLOAD` /
//!   `PAYLOAD_FILE`.

use std::io::{Cursor, Read};

use super::settings::Handler;
use crate::model::{FunctionStyle, Runtime};

/// Most of the entry file read for detection.
const MAX_SOURCE_BYTES: u64 = 1024 * 1024;

/// The handler module's source from a packaged archive (the first of the
/// module's candidate files present), if readable.
pub fn module_source(zip: &[u8], handler: &Handler, runtime: Runtime) -> Option<String> {
    let mut archive = zip::ZipArchive::new(Cursor::new(zip)).ok()?;
    for name in handler.module_files(runtime) {
        let Ok(entry) = archive.by_name(&name) else { continue };
        let mut text = Vec::new();
        entry.take(MAX_SOURCE_BYTES).read_to_end(&mut text).ok()?;
        return Some(String::from_utf8_lossy(&text).into_owned());
    }
    None
}

/// The style of a function whose upload does not name one.
pub fn detect(runtime: Runtime, handler: &Handler, source: &str) -> FunctionStyle {
    let program = match runtime {
        Runtime::Python => python_is_program(handler, source),
        Runtime::Nodejs => node_is_program(source),
    };
    if program {
        FunctionStyle::Program
    } else {
        FunctionStyle::Handler
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$'
}

/// Byte offsets where `word` occurs as a whole identifier.
fn word_at(text: &str, word: &str) -> Vec<usize> {
    text.match_indices(word)
        .filter(|(at, _)| {
            let before = text[..*at].chars().next_back();
            let after = text[at + word.len()..].chars().next();
            !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
        })
        .map(|(at, _)| at)
        .collect()
}

fn has_word(text: &str, word: &str) -> bool {
    !word_at(text, word).is_empty()
}

/// The source without `#` comments (naively: a `#` inside a string cuts
/// the line too, which can only make a handler word disappear from a
/// string, never make one appear).
fn strip_hash_comments(source: &str) -> String {
    source
        .lines()
        .map(|l| l.split_once('#').map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

fn reads_payload(code: &str) -> bool {
    code.contains("PAYLOAD")
}

fn python_is_program(handler: &Handler, source: &str) -> bool {
    let code = strip_hash_comments(source);
    if has_word(&code, &handler.function) {
        return false;
    }
    // The original runner's fallback entry point, `main(event, context)`,
    // applies to the default handler name only.
    if handler.function == "handler" && has_word(&code, "main") && !main_is_script_entry(&code) {
        return false;
    }
    let uses_sdk = has_word(&code, "sdk") && has_word(&code, "get_input");
    reads_payload(&code) || uses_sdk
}

/// `def main():` (no parameters), called under `if __name__ == "__main__":`:
/// a script's own entry point, not the original's `main(event, context)`.
fn main_is_script_entry(code: &str) -> bool {
    let guarded = code.contains("__name__") && code.contains("__main__");
    let defs: Vec<&str> = code
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("def main") || l.starts_with("async def main"))
        .collect();
    guarded
        && !defs.is_empty()
        && defs.iter().all(|l| {
            let rest = l
                .trim_start_matches("async ")
                .trim_start_matches("def main")
                .trim_start();
            rest.starts_with("()")
        })
}

fn node_is_program(source: &str) -> bool {
    let exports = has_word(source, "exports")
        || source
            .lines()
            .any(|l| l.trim_start().starts_with("export ") || l.trim_start().starts_with("export{"));
    !exports && reads_payload(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(source: &str) -> FunctionStyle {
        detect(Runtime::Python, &Handler::parse("main.handler").unwrap(), source)
    }

    fn node(source: &str) -> FunctionStyle {
        detect(Runtime::Nodejs, &Handler::parse("index.handler").unwrap(), source)
    }

    #[test]
    fn original_python_programs_are_programs() {
        let payload = "import json, os\nname = json.loads(os.environ.get('PAYLOAD', '{}')).get('name')\nprint(json.dumps({'hello': name}))\n";
        assert_eq!(py(payload), FunctionStyle::Program);
        let file =
            "import json, os\nwith open(os.environ['PAYLOAD_FILE']) as f:\n    data = json.load(f)\nprint(len(data))\n";
        assert_eq!(py(file), FunctionStyle::Program);
        let sdk = "import sdk\nevent = sdk.get_input()\nsdk.return_output({'n': event['n'] * 2})\n";
        assert_eq!(py(sdk), FunctionStyle::Program);
        let from_sdk = "from sdk import get_input\nprint(get_input())\n";
        assert_eq!(py(from_sdk), FunctionStyle::Program);
        // A script's own main(), called under the __main__ guard.
        let script = "import json, os\n\ndef main():\n    print(os.environ['PAYLOAD'])\n\nif __name__ == \"__main__\":\n    main()\n";
        assert_eq!(py(script), FunctionStyle::Program);
    }

    #[test]
    fn anything_that_may_be_a_handler_stays_a_handler() {
        assert_eq!(
            py("def handler(event, context):\n    return event\n"),
            FunctionStyle::Handler
        );
        // A handler that also reads PAYLOAD is still a handler.
        assert_eq!(
            py("import os\ndef handler(event, context):\n    return os.environ.get('PAYLOAD')\n"),
            FunctionStyle::Handler
        );
        // The original runner's main(event, context) fallback.
        assert_eq!(
            py("import sdk\ndef main(event, context):\n    return sdk.get_input()\n"),
            FunctionStyle::Handler
        );
        // Assigned or imported handlers.
        assert_eq!(py("from impl import handler\nPAYLOAD = 1\n"), FunctionStyle::Handler);
        // No sign of the original's input: not a program either.
        assert_eq!(py("print('hello')\n"), FunctionStyle::Handler);
        // `handler` in a comment does not count; the program reads PAYLOAD.
        assert_eq!(
            py("# not a handler\nimport os\nprint(os.environ['PAYLOAD'])\n"),
            FunctionStyle::Program
        );
        // A configured handler name is looked for, not `handler`.
        let custom = Handler::parse("main.run").unwrap();
        assert_eq!(
            detect(Runtime::Python, &custom, "def run(e, c):\n    return e\nPAYLOAD = 0\n"),
            FunctionStyle::Handler
        );
    }

    #[test]
    fn node_programs_export_nothing_and_read_payload() {
        assert_eq!(
            node(
                "const input = JSON.parse(process.env.PAYLOAD || '{}');\nconsole.log(JSON.stringify({ok: input.n}));\n"
            ),
            FunctionStyle::Program
        );
        assert_eq!(
            node("const fs = require('fs');\nconst p = JSON.parse(fs.readFileSync(process.env.PAYLOAD_FILE));\nconsole.log(p.length);\n"),
            FunctionStyle::Program
        );
        assert_eq!(
            node("exports.handler = async (e) => process.env.PAYLOAD;\n"),
            FunctionStyle::Handler
        );
        assert_eq!(
            node("module.exports.handler = async (e) => e;\n"),
            FunctionStyle::Handler
        );
        assert_eq!(
            node("export const handler = async (e) => process.env.PAYLOAD;\n"),
            FunctionStyle::Handler
        );
        assert_eq!(node("console.log('hi');\n"), FunctionStyle::Handler);
    }

    #[test]
    fn the_source_comes_from_the_handlers_module_file() {
        let zip = super::super::package::zip_files(
            &[
                ("main.py".to_string(), b"print(1)".to_vec()),
                ("other.py".to_string(), b"x".to_vec()),
            ]
            .into(),
        )
        .unwrap();
        let h = Handler::parse("main.handler").unwrap();
        assert_eq!(module_source(&zip, &h, Runtime::Python).as_deref(), Some("print(1)"));
        let h = Handler::parse("absent.handler").unwrap();
        assert_eq!(module_source(&zip, &h, Runtime::Python), None);
    }
}
