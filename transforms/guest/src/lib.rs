//! Write a wasmcdc transform in Rust: implement [`Transform`] for a type and
//! name the type in [`export!`]. This crate owns the bindings of the
//! `transformer` world in `wit/world.wit`, keeps the state that `init` built
//! for the instance's lifetime, and adds helpers for reading configuration and
//! editing changes.
//!
//! ```no_run
//! use wasmcdc_guest::{Change, Config, Transform, TxContext};
//!
//! struct Identity;
//!
//! impl Transform for Identity {
//!     fn init(_: Config) -> Result<Self, String> { Ok(Identity) }
//!     fn transform(&self, change: Change, _: &TxContext) -> Result<Vec<Change>, String> { Ok(vec![change]) }
//! }
//!
//! wasmcdc_guest::export!(Identity);
//! ```
//!
//! The crate that names the type is a `cdylib`; both
//! `cargo build --target wasm32-wasip2` and `cargo component build` turn it
//! into a component of the `transformer` world.

mod change;
mod config;

pub use config::Config;

/// The generated bindings. Their export macro is public so that the crate of
/// the transform, not this one, carries the world's exports.
#[doc(hidden)]
pub mod bindings {
    // The generated code flattens a change into many core-wasm parameters.
    #![allow(clippy::too_many_arguments)]

    wit_bindgen::generate!({
        path: "../../wit/v0.1",
        world: "transformer",
        pub_export_macro: true,
        default_bindings_module: "$crate::bindings",
        additional_derives: [PartialEq],
    });
}

pub use bindings::wasmcdc::transform::types::{Change, Column, Op, TxContext, Value};

/// A transform: the state built from its configuration, and what it does to
/// each change.
pub trait Transform: Sized + 'static {
    /// Builds the instance from its configuration; an `Err` stops the module
    /// from loading, with the message as the reason.
    ///
    /// Runs once per instance, also when the host recreates an instance after
    /// a failure, so keep here what the configuration decides, not what
    /// changes build up.
    fn init(config: Config) -> Result<Self, String>;

    /// Maps one change to none (drop), one (pass) or several (fan out); an
    /// `Err` dead-letters the change with the message as the reason.
    fn transform(&self, change: Change, ctx: &TxContext) -> Result<Vec<Change>, String>;
}

/// Exports a [`Transform`] as the component's `init` and `transform`.
///
/// Use it once, in the `cdylib` crate of the transform:
/// `wasmcdc_guest::export!(MyTransform);`.
#[macro_export]
macro_rules! export {
    ($ty:ty) => {
        const _: () = {
            ::std::thread_local! {
                static STATE: ::std::cell::OnceCell<$ty> = const { ::std::cell::OnceCell::new() };
            }

            struct Transformer;

            impl $crate::bindings::Guest for Transformer {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__rt::init(&STATE, ::std::env!("CARGO_PKG_NAME"), config)
                }

                fn transform(
                    change: $crate::Change,
                    ctx: $crate::TxContext,
                ) -> ::std::result::Result<::std::vec::Vec<$crate::Change>, ::std::string::String> {
                    $crate::__rt::transform(&STATE, ::std::env!("CARGO_PKG_NAME"), change, ctx)
                }
            }

    $crate::bindings::export!(Transformer with_types_in $crate::bindings);
        };
    };
}

/// What [`export!`] expands to call.
#[doc(hidden)]
pub mod __rt {
    use std::cell::OnceCell;
    use std::thread::LocalKey;

    use crate::{Change, Config, Transform, TxContext};

    /// Builds the instance's state and keeps it.
    pub fn init<T: Transform>(
        state: &'static LocalKey<OnceCell<T>>,
        name: &str,
        config: Vec<(String, String)>,
    ) -> Result<(), String> {
        let built = T::init(Config::named(name, config))?;
        // An instance is initialised once; a second call keeps the first configuration.
        state.with(|cell| {
            let _ = cell.set(built);
        });
        Ok(())
    }

    /// Transforms one change with the state `init` kept.
    pub fn transform<T: Transform>(
        state: &'static LocalKey<OnceCell<T>>,
        name: &str,
        change: Change,
        ctx: TxContext,
    ) -> Result<Vec<Change>, String> {
        state.with(|cell| match cell.get() {
            Some(transform) => transform.transform(change, &ctx),
            None => Err(format!("{name} was not initialised")),
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::Op;

        /// Appends its configured suffix to the table name.
        struct Suffix(String);

        impl Transform for Suffix {
            fn init(config: Config) -> Result<Self, String> {
                Ok(Self(config.require("suffix")?.to_owned()))
            }

            fn transform(&self, mut change: Change, _: &TxContext) -> Result<Vec<Change>, String> {
                change.table.push_str(&self.0);
                Ok(vec![change])
            }
        }

        thread_local! {
            static STATE: OnceCell<Suffix> = const { OnceCell::new() };
        }

        fn pairs(suffix: &str) -> Vec<(String, String)> {
            vec![("suffix".into(), suffix.into())]
        }

        #[test]
        fn keeps_the_first_state_that_init_builds() {
            let change = || Change::truncate("public", "t");
            let early = transform(&STATE, "suffix", change(), TxContext::default()).expect_err("before init");
            assert_eq!(early, "suffix was not initialised");
            assert!(init(&STATE, "suffix", vec![]).is_err());
            init(&STATE, "suffix", pairs("_a")).expect("first");
            init(&STATE, "suffix", pairs("_b")).expect("second");
            let out = transform(&STATE, "suffix", change(), TxContext::default()).expect("after init");
            assert_eq!(out, [Change::truncate("public", "t_a")]);
            assert_eq!(out[0].op, Op::Truncate);
        }
    }
}
