package dev.panamavmm.kvm.generator;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import org.junit.jupiter.api.Test;

/** The generator refuses declarations that would produce a wrong or incomplete layout. */
class DeclarationsTest {

    private static Declarations parse(String... lines) {
        return Declarations.parse(List.of(lines), "test.decl");
    }

    @Test
    void parsesPathsArraysAndAnonymousUnions() {
        var d = parse("include <linux/kvm.h>", "struct kvm_run", "  u8 (exit).io.size padding1[]", "  u32 extra[*]");
        var fields = d.structs().getFirst().fields();
        assertEquals("io.size", fields.get(0).designator());
        assertEquals("(exit).io.size", fields.get(0).declaredPath());
        assertEquals(Declarations.ArrayKind.MEASURED, fields.get(1).array());
        assertEquals(Declarations.ArrayKind.FLEXIBLE, fields.get(2).array());
    }

    @Test
    void rejectsUnknownTypesAndDirectives() {
        var e = assertThrows(IllegalArgumentException.class, () -> parse("struct x", "  u128 a"));
        assertTrue(e.getMessage().startsWith("test.decl:2: unknown type 'u128'"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> parse("strukt x"));
        assertThrows(IllegalArgumentException.class, () -> parse("  u8 a"));
    }

    @Test
    void aMissingFieldIsAnErrorNotAGap() throws Exception {
        // kvm_regs without rbx: the probe measures rcx at 16, leaving 8 undeclared bytes.
        var d = parse(
                "include <linux/kvm.h>",
                "struct kvm_regs",
                "  u64 rax rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags");
        var m = CProbe.measure(d);
        var e = assertThrows(IllegalStateException.class, () -> new JavaEmitter(m).emit(d));
        assertTrue(e.getMessage().contains("8 undeclared bytes before 'rcx'"), e.getMessage());
    }

    @Test
    void aWrongFieldTypeIsCaughtByTheCompiler() {
        var d = parse("include <linux/kvm.h>", "struct kvm_regs", "  u32 rax");
        var e = assertThrows(IllegalStateException.class, () -> CProbe.measure(d));
        assertTrue(e.getMessage().contains("kvm_regs.rax: declared type u32 does not match"), e.getMessage());
    }
}
