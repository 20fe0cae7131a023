use clap::Parser;

fn main() {
    let cli = freezer::cli::Cli::parse();
    std::process::exit(freezer::cli::main(cli));
}
