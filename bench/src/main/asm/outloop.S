/*
 * outloop: the guest of the exit round-trip benchmark (bench/run-exit-bench, docs/benchmarks.md).
 *
 * Entered through the Linux x86-64 64-bit boot protocol as Panama VMM boots any ELF kernel:
 * long mode, CPL0, identity paging, IF=0, RSI = boot_params (0x7000). It reads its command line
 * (boot_params.hdr.cmd_line_ptr, u32 at 0x228), then runs one loop of N iterations and exits
 * with code 0 through the VMM port (outl 0, 0x500). Command line tokens (others are ignored):
 *
 *   n=<decimal>     iterations (default 200000; 0 means none)
 *   mode=exit       loop body `out %al, %dx` to 0x3ff, COM1's scratch register: every
 *                   iteration is one exit to the VMM in user space (the default)
 *   mode=kernel     the same `out %al, %dx` to 0x21, the master PIC's mask register, which the
 *                   in-kernel irqchip handles: the guest's instructions are the same, but KVM
 *                   never returns to user space (0xff is written: every PIC line stays masked)
 *   mode=none       `nop` instead of the `out`: the loop alone
 *
 * All three loops are three instructions per iteration (`out`/`nop`, `dec`, `jnz`). On a PVM
 * host CPL0 code is emulated instruction by instruction, so `none` and `kernel` are the part of
 * an iteration that is not the exit to user space.
 *
 * Built at benchmark time: gcc -c outloop.S && ld -N -Ttext=0x100000 -e _start (see
 * bench/run-exit-bench). No stack, no data, no interrupts.
 */
    .code64
    .text
    .globl _start
_start:
    mov     $200000, %ecx           /* ecx = n */
    mov     $'e', %r8d              /* r8 = mode letter */
    mov     0x228(%rsi), %ebx       /* rbx = command line (u32 pointer; the upper half is cleared) */
    test    %rbx, %rbx
    jz      run

next_token:                         /* skip blanks */
    movzbl  (%rbx), %eax
    test    %al, %al
    jz      run
    cmp     $' ', %al
    jne     token
    inc     %rbx
    jmp     next_token

token:
    cmpw    $0x3d6e, (%rbx)         /* "n=" */
    je      parse_n
    cmpl    $0x65646f6d, (%rbx)     /* "mode" */
    jne     skip_token
    cmpb    $'=', 4(%rbx)
    jne     skip_token
    movzbl  5(%rbx), %r8d           /* e(xit), k(ernel), n(one) */
    jmp     skip_token

parse_n:
    add     $2, %rbx
    xor     %ecx, %ecx
1:  movzbl  (%rbx), %eax
    sub     $'0', %eax
    cmp     $9, %eax
    ja      skip_token              /* not a digit (unsigned compare): end of the number */
    imul    $10, %ecx, %ecx
    add     %eax, %ecx
    inc     %rbx
    jmp     1b

skip_token:                         /* up to the next blank or the end */
    movzbl  (%rbx), %eax
    test    %al, %al
    jz      run
    cmp     $' ', %al
    je      next_token
    inc     %rbx
    jmp     skip_token

run:
    test    %ecx, %ecx
    jz      done
    cmp     $'k', %r8d
    je      loop_kernel
    cmp     $'n', %r8d
    je      loop_none

loop_exit:                          /* COM1 scratch register: an exit to the VMM each time */
    mov     $0x3ff, %edx
    xor     %eax, %eax
1:  out     %al, %dx
    dec     %ecx
    jnz     1b
    jmp     done

loop_kernel:                        /* master PIC mask register: handled inside KVM */
    mov     $0x21, %edx
    mov     $0xff, %eax
1:  out     %al, %dx
    dec     %ecx
    jnz     1b
    jmp     done

loop_none:                          /* no I/O at all */
1:  nop
    dec     %ecx
    jnz     1b

done:
    mov     $0x500, %edx            /* VMM port: exit with code 0 */
    xor     %eax, %eax
    out     %eax, %dx
2:  cli
    hlt
    jmp     2b
