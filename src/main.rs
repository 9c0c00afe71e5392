fn main() -> std::process::ExitCode {
    p2p_copy::internals::cli::main()
}
