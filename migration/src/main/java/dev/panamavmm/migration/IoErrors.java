package dev.panamavmm.migration;

import java.io.IOException;
import java.nio.file.AccessDeniedException;
import java.nio.file.DirectoryNotEmptyException;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.FileSystemException;
import java.nio.file.NoSuchFileException;
import java.nio.file.NotDirectoryException;
import java.util.Locale;

/**
 * Why an I/O operation failed, without the path: the JDK's file exceptions carry the path as
 * their whole message ({@code /x.log}), so "cannot write /x.log: " + message repeats it. Callers
 * name the path once themselves.
 */
public final class IoErrors {
    private IoErrors() {}

    public static String reason(IOException e) {
        return switch (e) {
            case NoSuchFileException n ->
                n.getOtherFile() == null && n.getFile() != null && n.getReason() == null
                        ? "no such file or directory"
                        : fileSystemReason(n, "no such file or directory");
            case AccessDeniedException a -> "permission denied";
            case FileAlreadyExistsException f -> "it already exists";
            case NotDirectoryException n -> "not a directory";
            case DirectoryNotEmptyException d -> "the directory is not empty";
            case FileSystemException f -> fileSystemReason(f, f.getClass().getSimpleName());
            default -> e.getMessage() == null ? e.getClass().getSimpleName() : e.getMessage();
        };
    }

    private static String fileSystemReason(FileSystemException f, String fallback) {
        String r = f.getReason();
        if (r == null || r.isBlank()) return fallback;
        // "Read-only file system" -> "read-only file system"; keep acronyms ("ENOSPC") as they are.
        return r.length() > 1 && Character.isLowerCase(r.charAt(1))
                ? r.substring(0, 1).toLowerCase(Locale.ROOT) + r.substring(1)
                : r;
    }
}
