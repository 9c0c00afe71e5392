fn main() -> std::process::ExitCode {
    p2p_copy::cli::main()
}
