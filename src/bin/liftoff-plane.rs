//! The `liftoff-plane` binary: everything is in the library's `plane` room
//! (docs/plane.md).

fn main() {
    std::process::exit(liftoff::plane::cli::main());
}
