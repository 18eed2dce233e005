//! `stamma-loadtest`: the capacity tester. Not built yet; it is the next issue.

fn main() {
    eprintln!("stamma-loadtest is not implemented yet");
    std::process::exit(2);
}
