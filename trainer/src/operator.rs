//! The operator at the real arm, on the terminal. One background thread reads standard input line by
//! line for the whole process; the trainer asks it to wait for Enter (the scene is reset), whether an
//! episode succeeded (`y`/`n`), and, while an episode runs, whether Enter was pressed to end it early.
//!
//! Lines are consumed in order, so answers can also be piped in (`printf '\ny\n\nn\n' | train ...`): the
//! end-of-episode check takes a pending line only when it is empty (Enter), and leaves a `y`/`n` for the
//! question that follows.

use std::collections::VecDeque;
use std::io::BufRead;
use std::sync::{Condvar, Mutex, OnceLock};

/// What the reader thread has seen: pending lines, and whether standard input has closed.
#[derive(Default)]
struct Lines {
    pending: VecDeque<String>,
    closed: bool,
}

struct Terminal {
    lines: Mutex<Lines>,
    arrived: Condvar,
}

fn terminal() -> &'static Terminal {
    static TERMINAL: OnceLock<Terminal> = OnceLock::new();
    TERMINAL.get_or_init(|| {
        std::thread::spawn(|| {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                let Ok(line) = line else { break };
                let t = terminal();
                let mut lines = t.lines.lock().unwrap_or_else(|e| e.into_inner());
                lines.pending.push_back(line.trim().to_string());
                t.arrived.notify_all();
            }
            let t = terminal();
            t.lines.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
            t.arrived.notify_all();
        });
        Terminal {
            lines: Mutex::new(Lines::default()),
            arrived: Condvar::new(),
        }
    })
}

/// Standard input closed while the trainer waited for the operator.
#[derive(Debug, thiserror::Error)]
#[error(
    "{waiting_for}: standard input is closed, so no operator can answer; run in a terminal, pipe the \
     answers in, or set [robot] operator_reset = false and success = \"none\" or \"topreward\" for \
     unattended runs"
)]
pub struct NoOperator {
    pub waiting_for: String,
}

/// The next line, blocking until one arrives.
fn next_line(waiting_for: &str) -> Result<String, NoOperator> {
    let t = terminal();
    let mut lines = t.lines.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some(line) = lines.pending.pop_front() {
            return Ok(line);
        }
        if lines.closed {
            return Err(NoOperator {
                waiting_for: waiting_for.to_string(),
            });
        }
        lines = t.arrived.wait(lines).unwrap_or_else(|e| e.into_inner());
    }
}

/// Print `prompt` and wait for a line (any text; Enter is enough).
pub fn wait_for_enter(prompt: &str) -> Result<(), NoOperator> {
    eprintln!("{prompt}");
    next_line(prompt).map(|_| ())
}

/// Ask a yes/no question until the answer is `y`/`yes` or `n`/`no`.
pub fn ask_yes_no(question: &str) -> Result<bool, NoOperator> {
    loop {
        eprintln!("{question} [y/n]");
        match next_line(question)?.to_ascii_lowercase().as_str() {
            "y" | "yes" => return Ok(true),
            "n" | "no" => return Ok(false),
            other => eprintln!("please answer y or n (got {other:?})"),
        }
    }
}

/// Whether Enter was pressed since the last call (a pending empty line is taken). Never blocks.
pub fn end_requested() -> bool {
    let t = terminal();
    let mut lines = t.lines.lock().unwrap_or_else(|e| e.into_inner());
    if lines.pending.front().is_some_and(|l| l.is_empty()) {
        lines.pending.pop_front();
        return true;
    }
    false
}
