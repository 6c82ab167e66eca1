package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;

/** Threads started ahead run the work they are handed, under its name, and end on close when none came. */
class PrestartedThreadsTest {

    @Test
    void aThreadRunsItsWorkUnderItsNameAndTheOthersEndOnClose() throws Exception {
        var ran = new CompletableFuture<String>();
        var osName = new CompletableFuture<String>();
        Thread worker, idle;
        try (var threads = PrestartedThreads.start(2)) {
            worker = threads.run(0, "vcpu-0", () -> {
                ran.complete(Thread.currentThread().getName());
                try {
                    // What top -H, perf and /proc show: the kernel's name of the thread.
                    osName.complete(
                            Files.readString(Path.of("/proc/thread-self/comm")).strip());
                } catch (IOException e) {
                    osName.completeExceptionally(e);
                }
            });
            assertEquals("vcpu-0", ran.get(5, TimeUnit.SECONDS));
            assertEquals("vcpu-0", osName.get(5, TimeUnit.SECONDS));
            assertThrows(IllegalStateException.class, () -> threads.run(0, "vcpu-0", () -> {}));
            idle = threads.run(1, "vcpu-1", () -> {});
        }
        worker.join(5000);
        idle.join(5000);
        assertFalse(worker.isAlive());
        assertFalse(idle.isAlive());
    }

    @Test
    void threadsThatGetNoWorkEndWhenClosed() throws Exception {
        var threads = PrestartedThreads.start(2);
        var waiting = Thread.getAllStackTraces().keySet().stream()
                .filter(t -> t.getName().endsWith("-waiting") && t.isAlive())
                .toList();
        assertEquals(2, waiting.size(), "two threads wait for work");
        threads.close();
        for (var t : waiting) {
            t.join(5000);
            assertFalse(t.isAlive(), t.getName() + " ended");
        }
    }
}
