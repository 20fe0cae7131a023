use clap::Parser;

fn main() {
    freezer::sys::default_sigpipe();
    let cli = freezer::cli::Cli::parse();
    std::process::exit(freezer::cli::run(cli));
}
