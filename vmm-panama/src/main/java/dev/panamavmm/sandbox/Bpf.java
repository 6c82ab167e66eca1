package dev.panamavmm.sandbox;

import static dev.panamavmm.kvm.bindings.SandboxConstants.BPF_ABS;
import static dev.panamavmm.kvm.bindings.SandboxConstants.BPF_JA;
import static dev.panamavmm.kvm.bindings.SandboxConstants.BPF_JEQ;
import static dev.panamavmm.kvm.bindings.SandboxConstants.BPF_JMP;
import static dev.panamavmm.kvm.bindings.SandboxConstants.BPF_JSET;
import static dev.panamavmm.kvm.bindings.SandboxConstants.BPF_K;
import static dev.panamavmm.kvm.bindings.SandboxConstants.BPF_LD;
import static dev.panamavmm.kvm.bindings.SandboxConstants.BPF_RET;
import static dev.panamavmm.kvm.bindings.SandboxConstants.BPF_W;

import dev.panamavmm.kvm.bindings.SockFilter;
import dev.panamavmm.kvm.bindings.SockFprog;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * A small assembler for classic BPF, the language of seccomp filters: loads of the {@code
 * seccomp_data} words, compare-and-jump, unconditional jumps and returns, with named labels
 * resolved when the program is {@link #assemble assembled}. A conditional jump reaches at most
 * 255 instructions ahead (its offsets are bytes), so programs keep conditional targets near and
 * use {@link #jump} (32-bit offset) for far ones; a conditional jump too far is refused.
 */
public final class Bpf {
    /** One instruction; a jump names its targets by label (null: the next instruction). */
    private record Insn(int code, String jt, String jf, int k) {}

    private final List<Insn> program = new ArrayList<>();
    private final Map<String, Integer> labels = new HashMap<>();

    /** Loads the 32-bit word at {@code offset} of {@code struct seccomp_data} into the accumulator. */
    public Bpf load(long offset) {
        program.add(new Insn(BPF_LD | BPF_W | BPF_ABS, null, null, (int) offset));
        return this;
    }

    /** Jumps to {@code ifEqual} when the accumulator equals {@code k}, else to {@code otherwise} (null: next). */
    public Bpf jumpIfEqual(long k, String ifEqual, String otherwise) {
        program.add(new Insn(BPF_JMP | BPF_JEQ | BPF_K, ifEqual, otherwise, (int) k));
        return this;
    }

    /** Jumps to {@code ifSet} when the accumulator has any bit of {@code bits} set, else to {@code otherwise}. */
    public Bpf jumpIfAnySet(long bits, String ifSet, String otherwise) {
        program.add(new Insn(BPF_JMP | BPF_JSET | BPF_K, ifSet, otherwise, (int) bits));
        return this;
    }

    /** Jumps to {@code label} unconditionally. */
    public Bpf jump(String label) {
        program.add(new Insn(BPF_JMP | BPF_JA, label, null, 0));
        return this;
    }

    /** Ends the program with the seccomp action {@code action} (with its data bits). */
    public Bpf ret(long action) {
        program.add(new Insn(BPF_RET | BPF_K, null, null, (int) action));
        return this;
    }

    /** Names the next instruction. */
    public Bpf label(String name) {
        if (labels.putIfAbsent(name, program.size()) != null)
            throw new IllegalArgumentException("label " + name + " is defined twice");
        return this;
    }

    public int size() {
        return program.size();
    }

    /** The program as {@code struct sock_filter[]} plus its {@code struct sock_fprog}, in {@code arena}. */
    public MemorySegment assemble(Arena arena) {
        if (program.isEmpty() || program.size() > 4096)
            throw new IllegalStateException("a BPF program has 1 to 4096 instructions, not " + program.size());
        var filters = arena.allocate(SockFilter.BYTE_SIZE * program.size(), SockFilter.BYTE_ALIGNMENT);
        for (int pc = 0; pc < program.size(); pc++) {
            var insn = program.get(pc);
            var at = filters.asSlice(pc * SockFilter.BYTE_SIZE, SockFilter.BYTE_SIZE);
            SockFilter.code(at, insn.code());
            boolean always = insn.code() == (BPF_JMP | BPF_JA);
            int k = always ? offset(pc, insn.jt(), Integer.MAX_VALUE) : insn.k();
            SockFilter.jt(at, always ? 0 : offset(pc, insn.jt(), 255));
            SockFilter.jf(at, always ? 0 : offset(pc, insn.jf(), 255));
            SockFilter.k(at, k);
        }
        var prog = arena.allocate(SockFprog.LAYOUT);
        SockFprog.len(prog, program.size());
        SockFprog.filter(prog, filters);
        return prog;
    }

    /** Instructions skipped from the one after {@code pc} to {@code label} (0 for null: the next one). */
    private int offset(int pc, String label, int max) {
        if (label == null) return 0;
        Integer target = labels.get(label);
        if (target == null) throw new IllegalStateException("label " + label + " is not defined");
        int skip = target - pc - 1;
        if (skip < 0 || skip > max)
            throw new IllegalStateException("a jump from " + pc + " cannot reach label " + label + " at " + target);
        return skip;
    }
}
