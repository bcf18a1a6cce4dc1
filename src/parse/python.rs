//! Recognises Python tracebacks line by line, for `--multiline python`.
//!
//! A traceback continues the log line above it (what `logger.exception(...)` writes). Lines that
//! continue a record:
//! - `Traceback (most recent call last):` (and `Stack (most recent call last):` from `stack_info`);
//! - indented lines: frames, source lines, Python 3.11+ caret lines (`^^^^`, `~~~^^^`), exception
//!   group boxes (`  + Exception Group ...`, `  | ...`), and multi-line messages that indent their
//!   continuation lines;
//! - after frames, the `ExceptionType: message` line (a dotted identifier, then `:` or the end);
//! - after an exception line, blank lines and the chaining sentences "During handling of the above
//!   exception, another exception occurred:" / "The above exception was the direct cause of the
//!   following exception:", which lead to the next `Traceback` of the chain;
//! - blank lines anywhere (an empty line is never worth a record of its own).
//!
//! Every other line starts a new record. The check is a few byte comparisons, no regex.

const TRACEBACK: &[u8] = b"Traceback (most recent call last):";
const STACK: &[u8] = b"Stack (most recent call last):";
const DURING_HANDLING: &[u8] =
    b"During handling of the above exception, another exception occurred:";
const DIRECT_CAUSE: &[u8] = b"The above exception was the direct cause of the following exception:";

/// Where we are inside a traceback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PythonState {
    /// Not in a traceback.
    #[default]
    Outside,
    /// After a `Traceback` header: frames, then the exception line.
    Frames,
    /// After the exception line: a chained traceback may follow.
    AfterException,
    /// After a chaining sentence: blank lines, then the next `Traceback`.
    Chain,
}

impl PythonState {
    /// Classifies `line`; true when it continues the record above. Advances the state.
    pub fn continues(&mut self, line: &[u8]) -> bool {
        let first = line.first().copied();
        if (first == Some(b'T') && line.starts_with(TRACEBACK))
            || (first == Some(b'S') && line.starts_with(STACK))
        {
            *self = PythonState::Frames;
            return true;
        }
        let indented = matches!(first, Some(b' ' | b'\t'));
        if indented || is_blank(line) {
            return true;
        }
        match *self {
            PythonState::Frames if is_exception_line(line) => {
                *self = PythonState::AfterException;
                true
            }
            PythonState::AfterException | PythonState::Chain
                if line.starts_with(DURING_HANDLING) || line.starts_with(DIRECT_CAUSE) =>
            {
                *self = PythonState::Chain;
                true
            }
            _ => {
                *self = PythonState::Outside;
                false
            }
        }
    }
}

/// Empty or only spaces, tabs and a stray `\r`.
fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|c| matches!(c, b' ' | b'\t' | b'\r'))
}

/// `ValueError: ...`, `tasks.LedgerError: ...`, or a bare `KeyboardInterrupt`: a dotted
/// identifier followed by `:` or the end of the line.
fn is_exception_line(line: &[u8]) -> bool {
    let Some(first) = line.first() else {
        return false;
    };
    if !(first.is_ascii_alphabetic() || *first == b'_' || *first >= 0x80) {
        return false;
    }
    for (i, c) in line.iter().enumerate() {
        match c {
            b':' => return i > 0,
            c if c.is_ascii_alphanumeric() || *c == b'_' || *c == b'.' || *c >= 0x80 => {}
            b'\r' if i + 1 == line.len() => return true,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds lines through the state machine; returns which ones continue the record above.
    fn classify(lines: &[&str]) -> Vec<bool> {
        let mut state = PythonState::default();
        lines
            .iter()
            .map(|l| state.continues(l.as_bytes()))
            .collect()
    }

    #[test]
    fn chained_traceback_is_one_record() {
        let lines = [
            "ERROR settlement aborted",
            "Traceback (most recent call last):",
            "  File \"/app/tasks.py\", line 315, in settle_payment",
            "    _call_gateway(n)",
            "           ~~~~~~~~~~~~~~~~^^^^^^^^^^^^^^^^^^",
            "KeyError: 'transaction_id'",
            "",
            "The above exception was the direct cause of the following exception:",
            "",
            "Traceback (most recent call last):",
            "  File \"/app/tasks.py\", line 317, in settle_payment",
            "tasks.LedgerError: 정산 실패 💥",
            "",
            "During handling of the above exception, another exception occurred:",
            "",
            "Traceback (most recent call last):",
            "  File \"/app/tasks.py\", line 1, in x",
            "KeyboardInterrupt",
            "INFO next record",
        ];
        let got = classify(&lines);
        let mut want = vec![true; lines.len()];
        want[0] = false;
        want[lines.len() - 1] = false;
        assert_eq!(got, want);
    }

    #[test]
    fn log_lines_are_not_exception_lines() {
        let lines = [
            "first",
            "Traceback (most recent call last):",
            "  File \"x.py\", line 1, in f",
            "[2026-11-22 02:45:34,613: INFO/MainProcess] cut-off traceback, new record",
            "second",
            "During handling of the above exception, another exception occurred:",
        ];
        assert_eq!(classify(&lines), [false, true, true, false, false, false]);
    }
}
