/*
 * Entry point and interrupt entry stubs (CPL0). Every vCPU starts at _start in 64-bit mode,
 * CPL0, IF=0, RSI = boot_params; only the BSP has a usable RSP. On PVM hosts CPL0 code is
 * emulated instruction by instruction, so everything here is as short as it can be.
 */
#include "guest.h"

    .section .note.PanamaVMM, "a"
    .balign 4
    .long 10                    /* namesz: "PanamaVMM\0" */
    .long 4                     /* descsz */
    .long 1                     /* type 1: start every vCPU at e_entry */
    .asciz "PanamaVMM"
    .balign 4
    .long 0                     /* desc */
    .balign 4

    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    cli
    cld
    mov %rsi, %r12              /* boot_params */
    mov $1, %eax
    xor %ecx, %ecx
    cpuid
    mov %ebx, %r13d
    shr $24, %r13d              /* r13 = initial APIC ID = CPU index */
    shr $16, %ebx
    movzbl %bl, %r14d           /* r14 = vCPU count */
    cmp $MAX_CPUS, %r13d
    jae park
    test %r13d, %r13d
    jnz 1f
    /* BSP: page tables, IDT, per-CPU areas, COM1; publishes percpu_base when done */
    lea bsp_stack_top(%rip), %rsp
bsp_start:
    mov %r12, %rdi
    mov %r14d, %esi
    call bsp_init
    jmp 2f
1:  pause                       /* APs: wait for the BSP (no stack yet) */
    mov percpu_base(%rip), %rax
    test %rax, %rax
    jz 1b
    cmp ncpus(%rip), %r13d      /* an APIC ID outside 0..n-1 has no per-CPU area */
    jae park
2:  mov percpu_base(%rip), %rax
    mov %r13, %rcx
    shl $PCPU_SHIFT, %rcx
    lea KSTACK_TOP(%rax,%rcx), %rsp
    mov %r13d, %edi
    call cpu_init               /* does not return: iretq to CPL3 */
park:
    cli
    hlt
    jmp park

/*
 * PVH entry (XEN_ELFNOTE_PHYS32_ENTRY, only in testguest-pvh.elf: see pvhnote.S): how QEMU
 * starts an ELF kernel. The boot CPU alone arrives here, in 32-bit protected mode without
 * paging, EBX = hvm_start_info; the others wait for INIT/SIPI, which this guest never sends,
 * so it runs on one CPU. Identity-map [0, 4 GiB) with 2 MiB pages (tables in .bss), enter
 * long mode with the same selectors the 64-bit entry gets, turn the start info into a zero
 * page (pvh_boot_params in kernel.c) and join the BSP's path of _start.
 */
    .code32
    .globl pvh_start
pvh_start:
    cli
    cld
    mov %ebx, %esi
    mov $pvh_pd, %edi
    mov $0x83, %eax             /* P | RW | PS */
    xor %edx, %edx
    mov $2048, %ecx
1:  mov %eax, (%edi)
    mov %edx, 4(%edi)
    add $0x200000, %eax
    adc $0, %edx
    add $8, %edi
    dec %ecx
    jnz 1b
    mov $pvh_pdpt, %edi
    mov $(pvh_pd + 3), %eax
    mov $4, %ecx
2:  mov %eax, (%edi)
    add $4096, %eax
    add $8, %edi
    dec %ecx
    jnz 2b
    movl $(pvh_pdpt + 3), pvh_pml4
    lgdt pvh_gdtr
    mov %cr4, %eax
    or $0x20, %eax              /* PAE */
    mov %eax, %cr4
    mov $pvh_pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx       /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov $0x80050033, %eax       /* PE|MP|ET|NE|WP|AM|PG, as the 64-bit entry gets it */
    mov %eax, %cr0
    ljmp $SEL_KCODE, $pvh_long
    .code64
pvh_long:
    mov $SEL_KDATA, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    lea bsp_stack_top(%rip), %rsp
    mov %esi, %edi
    call pvh_boot_params        /* -> our zero page */
    mov %rax, %r12
    xor %r13d, %r13d            /* CPU 0 */
    mov $1, %r14d               /* of 1 */
    jmp bsp_start

    .section .rodata
    .balign 16
pvh_gdt:
    .quad 0, 0
    .quad 0x00AF9A000000FFFF    /* 0x10 code, 64-bit */
    .quad 0x00CF92000000FFFF    /* 0x18 data */
pvh_gdtr:
    .word pvh_gdtr - pvh_gdt - 1
    .long pvh_gdt
    .previous

/* void enter_user(uint64_t rip, uint64_t rsp, uint64_t arg): iretq to CPL3 with IF=1, rdi = arg */
    .globl enter_user
enter_user:
    pushq $SEL_UDATA
    pushq %rsi
    pushq $0x202
    pushq $SEL_UCODE
    pushq %rdi
    mov %rdx, %rdi
    iretq

/* Timer: count the tick in this CPU's area (found from the stack), EOI. */
    .globl timer_isr
timer_isr:
    push %rax
    mov %rsp, %rax
    and $-PCPU_SIZE, %rax
    incq PCPU_TICKS(%rax)
    mov $(LAPIC_BASE + 0xB0), %eax
    movl $0, (%rax)
    pop %rax
    iretq

    .globl spurious_isr
spurious_isr:
    iretq

/*
 * uint64_t sys_call(uint64_t request, uint64_t a, uint64_t b), called at CPL3.
 * The ud2 traps to ud_isr, which serves the request and resumes after the ud2.
 */
    .globl sys_call
sys_call:
sys_trap:
    ud2
    ret

/* #UD: a request if it came from sys_trap, else fatal. */
    .globl ud_isr
ud_isr:
    push %rax
    lea sys_trap(%rip), %rax
    cmp %rax, 8(%rsp)           /* faulting RIP */
    pop %rax
    jne 1f
    addq $2, (%rsp)             /* resume after the ud2 */
    /* rdi = request, rsi, rdx = arguments, rax = result; every other register preserved */
    push %rcx
    push %rsi
    push %rdi
    push %rdx
    push %r8
    push %r9
    push %r10
    push %r11
    sub $8, %rsp
    call ksyscall
    add $8, %rsp
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdx
    pop %rdi
    pop %rsi
    pop %rcx
    iretq
1:  pushq $0
    pushq $6
    jmp exc_common

/* Exceptions 0..31: 16-byte stubs, stub i at exc_stubs + 16 * i. All are fatal. */
    .balign 16
    .globl exc_stubs
exc_stubs:
    .set vec, 0
    .rept 32
    .balign 16
    .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0                    /* no error code pushed by the CPU */
    .endif
    pushq $vec
    jmp exc_common
    .set vec, vec + 1
    .endr

exc_common:
    mov %rsp, %rdi              /* -> { vector, error, rip, cs, rflags, rsp, ss } */
    and $-16, %rsp
    call kfatal
    jmp park

    .section .bss
    .balign 4096
pvh_pml4:
    .skip 4096
pvh_pdpt:
    .skip 4096
pvh_pd:
    .skip 4 * 4096
    .balign 16
bsp_stack:
    .skip 4096
bsp_stack_top:
