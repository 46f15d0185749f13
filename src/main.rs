//! The `liftoff` binary: everything is in the library's `cli` room.

fn main() {
    std::process::exit(liftoff::cli::main());
}
