/*
 * The PVH entry note (Xen's XEN_ELFNOTE_PHYS32_ENTRY, type 18), linked only into
 * testguest-pvh.elf, the image for QEMU. testguest.elf has no such note: Panama VMM boots an ELF
 * that has one through its PVH entry, which starts the boot CPU alone, and the test guest must
 * keep starting every vCPU at the 64-bit entry there.
 */
    .section .note.Xen, "a"
    .balign 4
    .long 4                     /* namesz: "Xen\0" */
    .long 8                     /* descsz: a 64-bit address, as QEMU reads it from an ELF64 */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .long pvh_start             /* desc, low half (the image lies below 4 GiB) */
    .long 0
    .balign 4
