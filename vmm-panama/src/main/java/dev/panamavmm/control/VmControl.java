package dev.panamavmm.control;

import dev.panamavmm.api.ControlTarget;
import dev.panamavmm.migration.Json;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.vmm.Balloons;
import dev.panamavmm.vmm.LocalMigration;
import dev.panamavmm.vmm.Vm;
import dev.panamavmm.vmm.VmExitReason;
import dev.panamavmm.vmm.VmSnapshots;
import java.nio.file.Path;
import java.util.Map;
import java.util.function.LongFunction;

/** The control API of one VM: what {@code query-status}, {@code stop}, {@code snapshot}, ... do to it. */
public final class VmControl implements ControlTarget {
    private final Vm vm;
    private final LongFunction<RamWriter.Progress> progress;

    /**
     * {@code progress} makes the progress reporter of a save, given the bytes of RAM; the CLI draws
     * a bar on the VMM's terminal, other owners report nothing.
     */
    public VmControl(Vm vm, LongFunction<RamWriter.Progress> progress) {
        this.vm = vm;
        this.progress = progress;
    }

    public VmControl(Vm vm) {
        this(vm, bytes -> RamWriter.Progress.NONE);
    }

    @Override
    public Map<String, Object> status() {
        var status = vm.status();
        return Json.object("status", status.qmpName(), "running", status == Vm.Status.RUNNING);
    }

    @Override
    public void stop() throws InterruptedException {
        vm.pause();
    }

    @Override
    public void cont() {
        vm.resume();
    }

    @Override
    public void quit() {
        vm.end(new VmExitReason.Stopped("the API (quit)"));
    }

    @Override
    public Map<String, Object> migrate(String uri) throws Exception {
        if (!uri.startsWith("unix:") || uri.length() == 5)
            throw new IllegalArgumentException("\"uri\" must be unix:PATH");
        var r = LocalMigration.send(vm, Path.of(uri.substring(5)), 10);
        return Json.object(
                "downtime-ms",
                r.downtimeMillis(),
                "downtime-us",
                r.downtimeMicros(),
                "confirmed-ms",
                r.confirmedMillis(),
                "total-ms",
                r.totalMillis(),
                "bytes-sent",
                r.bytesSent());
    }

    @Override
    public void balloon(long targetMib) {
        Balloons.setTarget(vm, targetMib);
    }

    @Override
    public Map<String, Object> queryBalloon() {
        return Balloons.query(vm);
    }

    @Override
    public Map<String, Object> snapshot(Path dir, boolean bypass, boolean resume) throws Exception {
        var bar = progress.apply(vm.memory().size());
        var saved = VmSnapshots.save(vm, dir, bypass, resume, bar);
        if (bar instanceof AutoCloseable done) done.close();
        return Json.object(
                "path",
                saved.file().toString(),
                "ram-bytes-written",
                saved.ramBytesWritten(),
                "ram-blocks-by-reference",
                saved.ramBlocksByReference(),
                "duration-ms",
                saved.millis(),
                "resumed",
                resume);
    }
}
