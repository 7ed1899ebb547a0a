//! `simsiam`: the command-line edge. The subcommands, their arguments and handlers are in
//! `cli/`; library errors are typed, and become `anyhow` messages with context there.
mod cli;

fn main() {
    // Behave as a Unix filter: `simsiam ... | head` ends quietly instead of panicking.
    // SAFETY: resetting a signal disposition at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    if let Err(e) = cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(match e.downcast_ref::<simsiam::Error>() {
            Some(simsiam::Error::Interrupted { .. }) => 130,
            _ => 1,
        });
    }
}
