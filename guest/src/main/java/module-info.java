/** The test guest's images ({@code guest/testguest.elf}) and the patterns of its output lines. */
module dev.panamavmm.guest {
    exports dev.panamavmm.guest;
}
