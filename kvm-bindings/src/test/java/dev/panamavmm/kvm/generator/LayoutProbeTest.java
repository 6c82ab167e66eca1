package dev.panamavmm.kvm.generator;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.generator.CProbe.FieldFacts;
import dev.panamavmm.kvm.generator.CProbe.Measurements;
import dev.panamavmm.kvm.generator.Declarations.ArrayKind;
import dev.panamavmm.kvm.generator.Declarations.PathPart;
import dev.panamavmm.kvm.generator.Declarations.Primitive;
import java.lang.foreign.Arena;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SequenceLayout;
import java.lang.foreign.StructLayout;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;

/**
 * Checks the loaded binding classes (layouts, offset constants and accessors) against the C
 * compiler's view of the same structs. Independent of the emitter: a layout built wrongly, an
 * offset constant edited by hand, or an accessor reading the wrong bytes all fail here.
 */
class LayoutProbeTest {
    private static final String PACKAGE = "dev.panamavmm.kvm.bindings.";
    private static Declarations decls;
    private static Measurements c;

    @BeforeAll
    static void measure() throws Exception {
        decls = Declarations.read(Path.of("bindings.decl"));
        c = CProbe.measure(decls);
    }

    @TestFactory
    Stream<DynamicTest> everyStructMatchesC() {
        return decls.structs().stream()
                .map(s -> DynamicTest.dynamicTest("struct " + s.cName(), () -> {
                    var facts = c.structs().get(s.cName());
                    var cls = Class.forName(PACKAGE + s.javaName());
                    var layout = (StructLayout) cls.getField("LAYOUT").get(null);
                    assertEquals(facts.size(), layout.byteSize(), s.cName() + ": LAYOUT size");
                    assertEquals(facts.size(), cls.getField("BYTE_SIZE").getLong(null), s.cName() + ": BYTE_SIZE");
                    assertEquals(facts.alignment(), layout.byteAlignment(), s.cName() + ": LAYOUT alignment");
                    assertEquals(
                            facts.alignment(),
                            cls.getField("BYTE_ALIGNMENT").getLong(null),
                            s.cName() + ": BYTE_ALIGNMENT");
                    for (var f : facts.fields()) checkField(s.cName(), facts.size(), cls, layout, f);
                }));
    }

    private static void checkField(String struct, long structSize, Class<?> cls, StructLayout layout, FieldFacts f)
            throws Exception {
        var field = f.field();
        String where = struct + "." + field.declaredPath();
        var path = new ArrayList<MemoryLayout.PathElement>();
        for (PathPart part : field.path()) path.add(MemoryLayout.PathElement.groupElement(part.name()));
        var names = field.cNames();
        var elements = path.toArray(MemoryLayout.PathElement[]::new);
        assertEquals(f.offset(), layout.byteOffset(elements), where + ": offset in LAYOUT");
        String constant = JavaEmitter.constantName(names);
        assertEquals(f.offset(), cls.getField(constant).getLong(null), where + ": constant " + constant);

        var member = layout.select(elements);
        if (field.array() == ArrayKind.NONE) {
            assertEquals(f.elementSize(), member.byteSize(), where + ": size in LAYOUT");
        } else {
            var seq = assertInstance(SequenceLayout.class, member, where);
            assertEquals(f.count(), seq.elementCount(), where + ": array length in LAYOUT");
            assertEquals(f.elementSize(), seq.elementLayout().byteSize(), where + ": element size in LAYOUT");
            if (field.array() == ArrayKind.MEASURED) {
                assertEquals(
                        f.count(), cls.getField(constant + "_COUNT").getLong(null), where + ": " + constant + "_COUNT");
            }
        }
        if (field.primitive() != null && field.primitive() != Primitive.PTR && field.array() != ArrayKind.FLEXIBLE) {
            checkAccessorTouchesExactlyItsBytes(cls, JavaEmitter.methodName(names), structSize, f, where);
        }
    }

    /** Writes all-ones through the generated setter and checks which bytes of the struct changed. */
    private static void checkAccessorTouchesExactlyItsBytes(
            Class<?> cls, String method, long size, FieldFacts f, String where) throws Exception {
        var p = f.field().primitive();
        boolean wide = p.size == 8;
        Class<?> valueType = wide ? long.class : int.class;
        boolean indexed = f.field().array() != ArrayKind.NONE;
        var setter = indexed
                ? cls.getMethod(method, MemorySegment.class, long.class, valueType)
                : cls.getMethod(method, MemorySegment.class, valueType);
        var getter = indexed
                ? cls.getMethod(method, MemorySegment.class, long.class)
                : cls.getMethod(method, MemorySegment.class);
        long index = indexed ? f.count() - 1 : 0;
        long expectedAt = f.offset() + index * f.elementSize();
        try (var arena = Arena.ofConfined()) {
            var seg = arena.allocate(size, 8);
            Object ones = wide ? (Object) (-1L) : (Object) (-1);
            if (indexed) setter.invoke(null, seg, index, ones);
            else setter.invoke(null, seg, ones);
            for (long i = 0; i < size; i++) {
                boolean inside = i >= expectedAt && i < expectedAt + f.elementSize();
                assertEquals(
                        inside ? (byte) -1 : 0,
                        seg.get(JAVA_BYTE, i),
                        where + ": setter " + method + " wrote byte " + i);
            }
            Object read = indexed ? getter.invoke(null, seg, index) : getter.invoke(null, seg);
            long expected = p.unsigned() && p.size < 4 ? (1L << (8 * p.size)) - 1 : -1L;
            assertEquals(expected, ((Number) read).longValue(), where + ": getter " + method);
        }
    }

    @Test
    void constantsMatchC() throws Exception {
        for (var e : decls.constantClasses().entrySet()) {
            var cls = Class.forName(PACKAGE + e.getKey());
            for (var k : e.getValue()) {
                long expected = c.constants().get(k.name());
                assertEquals(
                        expected, ((Number) cls.getField(k.name()).get(null)).longValue(), e.getKey() + "." + k.name());
            }
        }
    }

    @Test
    void ioctlNumbersMatchC() throws Exception {
        var cls = Class.forName(PACKAGE + "Ioctls");
        var name = cls.getMethod("name", long.class);
        for (var ioctl : decls.ioctls()) {
            long expected = c.ioctls().get(ioctl);
            assertEquals(expected, cls.getField(ioctl).getLong(null), "Ioctls." + ioctl);
            assertEquals(ioctl, name.invoke(null, expected), "Ioctls.name(" + ioctl + ")");
        }
    }

    @Test
    void theDeclarationsCoverWhatTheVmmNeeds() {
        var names = decls.structs().stream().map(Declarations.Struct::cName).toList();
        for (var needed : List.of(
                "kvm_run",
                "kvm_regs",
                "kvm_sregs",
                "kvm_segment",
                "kvm_dtable",
                "kvm_fpu",
                "kvm_xsave",
                "kvm_xcrs",
                "kvm_lapic_state",
                "kvm_msrs",
                "kvm_msr_entry",
                "kvm_msr_list",
                "kvm_cpuid2",
                "kvm_cpuid_entry2",
                "kvm_vcpu_events",
                "kvm_mp_state",
                "kvm_debugregs",
                "kvm_irqchip",
                "kvm_pit_state2",
                "kvm_pit_config",
                "kvm_clock_data",
                "kvm_userspace_memory_region",
                "kvm_dirty_log",
                "kvm_irq_level",
                "kvm_irqfd",
                "kvm_ioeventfd",
                "kvm_irq_routing",
                "kvm_msi",
                "kvm_enable_cap",
                "uffdio_api",
                "uffdio_register",
                "uffdio_copy",
                "uffdio_zeropage",
                "uffd_msg",
                "pollfd",
                "msghdr",
                "cmsghdr",
                "iovec",
                "sigaction")) {
            assertTrue(names.contains(needed), "bindings.decl lacks struct " + needed);
        }
    }

    private static <T> T assertInstance(Class<T> type, Object o, String where) {
        assertTrue(type.isInstance(o), where + ": expected a " + type.getSimpleName() + ", got " + o);
        return type.cast(o);
    }
}
