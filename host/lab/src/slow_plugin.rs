//! A plugin file that is slow to compile: a WebAssembly component of a given size whose one
//! core module holds `code` bytes of code (many functions of branchy bodies: about 10 s of
//! compile per MiB here, one core) and a passive data segment for the rest. It is not a halo
//! plugin — loading it fails after the compile, when its exports are checked — so it stands for
//! any large or hostile component a site drops in as a plugin: what it costs is the compile.
//! The lab tests and the liveness benchmark hot-swap it while the cluster must keep its
//! heartbeats and fail over on time (issue 14).

use wasm_encoder::{
    BlockType, CodeSection, Component, DataSection, Function, FunctionSection, Instruction, MemorySection, MemoryType,
    Module, ModuleSection, TypeSection, ValType,
};

/// About `bytes` of component with about `code` bytes of code, differing with `salt` (so a
/// compile cache never has it).
pub fn component(bytes: usize, code: usize, salt: u32) -> Vec<u8> {
    const PER_FUNCTION: usize = 4 * 1024;
    let functions = code.min(bytes).div_ceil(PER_FUNCTION).max(1);
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32], [ValType::I32]);
    let mut declared = FunctionSection::new();
    let mut code_section = CodeSection::new();
    for f in 0..functions {
        declared.function(0);
        let mut body = Function::new([(2, ValType::I32)]);
        let mut written = 0;
        let mut k = salt.wrapping_add(f as u32);
        while written < PER_FUNCTION {
            // A block with a conditional exit and a little arithmetic on three locals: many
            // basic blocks and live values, which is what a compiler spends its time on.
            k = k.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            for instruction in [
                Instruction::Block(BlockType::Empty),
                Instruction::LocalGet(0),
                Instruction::I32Const((k >> 8) as i32),
                Instruction::I32Add,
                Instruction::LocalTee(1),
                Instruction::LocalGet(2),
                Instruction::I32Xor,
                Instruction::LocalSet(2),
                Instruction::LocalGet(1),
                Instruction::I32Const((k & 31) as i32),
                Instruction::I32Rotl,
                Instruction::LocalTee(0),
                Instruction::BrIf(0),
                Instruction::LocalGet(2),
                Instruction::I32Const(k as i32 | 1),
                Instruction::I32Mul,
                Instruction::LocalSet(0),
                Instruction::End,
            ] {
                body.instruction(&instruction);
            }
            written += 40;
        }
        body.instruction(&Instruction::LocalGet(0));
        body.instruction(&Instruction::End);
        code_section.function(&body);
    }
    let mut memories = MemorySection::new();
    memories.memory(MemoryType { minimum: 1, maximum: Some(1), memory64: false, shared: false, page_size_log2: None });
    let mut data = DataSection::new();
    let filler = bytes.saturating_sub(functions * PER_FUNCTION);
    data.passive((0..filler).map(|i| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(salt) as u8));
    let mut module = Module::new();
    module.section(&types).section(&declared).section(&memories).section(&code_section).section(&data);
    let mut component = Component::new();
    component.section(&ModuleSection(&module));
    component.finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn it_is_about_the_size_asked_and_differs_by_salt() {
        let a = super::component(1 << 20, 64 << 10, 1);
        let b = super::component(1 << 20, 64 << 10, 2);
        assert!(a.len() > 900_000 && a.len() < 1_400_000, "{} bytes", a.len());
        assert_ne!(a, b);
        assert_eq!(&a[..4], b"\0asm", "a WebAssembly binary");
    }
}
