package dev.panamavmm.devices.virtio;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.util.List;

/** A block backend over a real file through NIO, for tests without native code (the VMM's own uses preadv/pwritev). */
record ChannelBackend(FileChannel channel, long size) implements BlockBackend {
    @Override
    public long read(long offset, List<MemorySegment> buffers) throws IOException {
        long n = 0;
        for (var b : buffers) {
            ByteBuffer bb = b.asByteBuffer();
            while (bb.hasRemaining()) {
                int r = channel.read(bb, offset + n);
                if (r < 0) return n;
                n += r;
            }
        }
        return n;
    }

    @Override
    public long write(long offset, List<MemorySegment> buffers) throws IOException {
        long n = 0;
        for (var b : buffers) {
            ByteBuffer bb = b.asByteBuffer();
            while (bb.hasRemaining()) n += channel.write(bb, offset + n);
        }
        return n;
    }

    @Override
    public void flush() throws IOException {
        channel.force(false);
    }

    @Override
    public void discard(long offset, long length) throws IOException {
        writeZeroes(offset, length, true);
    }

    @Override
    public void writeZeroes(long offset, long length, boolean unmap) throws IOException {
        var zeros = ByteBuffer.allocate((int) length);
        while (zeros.hasRemaining()) channel.write(zeros, offset + zeros.position());
    }
}
