package dev.panamavmm.vmm.postcopy;

/**
 * What one side of a post-copy migration moved, over every connection so far (recovery included).
 *
 * @param pagesRequested pages sent (or received) because the destination faulted on them
 * @param pagesStreamed  pages sent (or received) by the background stream
 * @param zeroPages      pages sent (or received) as zero markers, never as 4 KiB of zeros
 * @param duplicates     destination: pages that arrived when already present, discarded (0 unless
 *                       a page was sent twice); source: requests for a page already sent
 * @param bytes          bytes written (source) or read (destination) on the connections
 * @param millisToLastPage from the first connection's start to the last page sent or received
 * @param faultWaitMicros destination: how long threads waited for the pages they faulted on, summed
 *                        over those pages (the guest's time lost to post-copy; QEMU's blocktime)
 * @param maxFaultWaitMicros destination: the longest of those waits
 */
public record Stats(
        long pagesRequested,
        long pagesStreamed,
        long zeroPages,
        long duplicates,
        long bytes,
        long millisToLastPage,
        long faultWaitMicros,
        long maxFaultWaitMicros) {

    /** Every page that arrived (or was sent): requested, streamed and zero. */
    public long pages() {
        return pagesRequested + pagesStreamed + zeroPages;
    }
}
