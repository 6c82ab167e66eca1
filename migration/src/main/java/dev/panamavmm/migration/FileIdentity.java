package dev.panamavmm.migration;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.FileTime;
import java.util.Map;
import java.util.concurrent.TimeUnit;

/**
 * Who a memory file is and whether it changed: device, inode, size, modification and status-change
 * times (nanoseconds). A shared RAM block is saved by reference to its file; restore compares the
 * file's identity now with the one saved and refuses a different or modified file.
 *
 * <p>Note: on tmpfs, writes through a shared mapping do not always update mtime, so the identity
 * alone cannot prove the content is unchanged; the VMM also stops (or copy-on-write protects) a
 * guest after a bypass save, so nothing it runs writes the file afterwards.
 */
public record FileIdentity(long device, long inode, long size, long mtimeNanos, long ctimeNanos) {

    public static FileIdentity of(Path file) throws IOException {
        Map<String, Object> a = Files.readAttributes(file, "unix:dev,ino,size,lastModifiedTime,ctime");
        return new FileIdentity(
                (Long) a.get("dev"),
                (Long) a.get("ino"),
                (Long) a.get("size"),
                nanos((FileTime) a.get("lastModifiedTime")),
                nanos((FileTime) a.get("ctime")));
    }

    private static long nanos(FileTime t) {
        return t.to(TimeUnit.NANOSECONDS);
    }

    public Map<String, Object> toJson() {
        return Json.object(
                "device", device, "inode", inode, "size", size, "mtimeNanos", mtimeNanos, "ctimeNanos", ctimeNanos);
    }

    public static FileIdentity fromJson(Map<String, Object> m) {
        return new FileIdentity(
                Fields.longOf(m, "device"),
                Fields.longOf(m, "inode"),
                Fields.longOf(m, "size"),
                Fields.longOf(m, "mtimeNanos"),
                Fields.longOf(m, "ctimeNanos"));
    }

    /** What differs between this (saved) identity and {@code now}, or null when they match. */
    public String difference(FileIdentity now) {
        if (device != now.device || inode != now.inode) return "it is a different file (device/inode changed)";
        if (size != now.size) return "its size changed from " + size + " to " + now.size + " bytes";
        if (mtimeNanos != now.mtimeNanos || ctimeNanos != now.ctimeNanos) return "it was modified after the snapshot";
        return null;
    }
}
