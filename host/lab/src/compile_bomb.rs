//! Components that are pathological for the compiler (issue 15): each is small, and each
//! shape makes Cranelift spend time or memory far out of proportion to its size. None is a
//! halo plugin; what they test is the compile — the structural check refuses some before any
//! compile, the compile limits (time, memory, in a child process) stop the rest.
//!
//! Figures here (one core): blocks nested 10,000 deep 5.6 s, 50,000 deep 107 s; loops nested
//! 2,000 deep 0.44 s each; 100,000 call sites in one function 2 s and 317 MB.

use wasm_encoder::{
    BlockType, CodeSection, Component, Function, FunctionSection, Instruction, Module, ModuleSection, TypeSection,
    ValType,
};

/// `functions` functions `(i32) -> i32` with the bodies `body` writes, in one component.
fn component(functions: u32, body: impl Fn(u32, &mut Function)) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32], [ValType::I32]);
    let mut declared = FunctionSection::new();
    let mut code = CodeSection::new();
    for f in 0..functions {
        declared.function(0);
        let mut function = Function::new([(2, ValType::I32)]);
        body(f, &mut function);
        function.instruction(&Instruction::LocalGet(0));
        function.instruction(&Instruction::End);
        code.function(&function);
    }
    let mut module = Module::new();
    module.section(&types).section(&declared).section(&code);
    let mut component = Component::new();
    component.section(&ModuleSection(&module));
    component.finish()
}

/// One level of nesting: a block or loop that counts its parameter down and may branch out.
fn nest(function: &mut Function, looping: bool) {
    let kind = BlockType::Empty;
    function.instruction(&if looping { Instruction::Loop(kind) } else { Instruction::Block(kind) });
    function.instruction(&Instruction::LocalGet(0));
    function.instruction(&Instruction::I32Const(1));
    function.instruction(&Instruction::I32Sub);
    function.instruction(&Instruction::LocalTee(0));
    function.instruction(&Instruction::BrIf(0));
}

/// One function whose blocks nest `depth` deep (50,000: 600 KB, 107 s to compile here).
pub fn nested_blocks(depth: u32) -> Vec<u8> {
    component(1, |_, f| {
        for _ in 0..depth {
            nest(f, false);
        }
        for _ in 0..depth {
            f.instruction(&Instruction::End);
        }
    })
}

/// `functions` functions of loops nested `depth` deep, differing with `salt`: within the
/// structural limits for `depth` ≤ 1,000, and about 0.15 s of compile per function at 900.
pub fn nested_loops(functions: u32, depth: u32, salt: i32) -> Vec<u8> {
    component(functions, |i, f| {
        for _ in 0..depth {
            nest(f, true);
        }
        f.instruction(&Instruction::I32Const(salt.wrapping_add(i as i32)));
        f.instruction(&Instruction::LocalSet(1));
        for _ in 0..depth {
            f.instruction(&Instruction::End);
        }
    })
}

/// One function with `calls` call sites (of itself): 100,000 take 2 s and 317 MB to compile.
pub fn many_calls(calls: u32) -> Vec<u8> {
    component(1, |_, f| {
        for _ in 0..calls {
            f.instruction(&Instruction::LocalGet(0));
            f.instruction(&Instruction::Call(0));
            f.instruction(&Instruction::LocalSet(0));
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bombs_are_small_webassembly_components() {
        for bytes in [super::nested_blocks(50_000), super::nested_loops(10, 900, 1), super::many_calls(90_000)] {
            assert_eq!(&bytes[..4], b"\0asm");
            assert!(bytes.len() < 1 << 20, "{} bytes", bytes.len());
        }
        assert_ne!(super::nested_loops(2, 10, 1), super::nested_loops(2, 10, 2), "the salt makes them differ");
    }
}
