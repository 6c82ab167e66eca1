package dev.panamavmm.kvm.generator;

import dev.panamavmm.kvm.generator.CProbe.FieldFacts;
import dev.panamavmm.kvm.generator.CProbe.Measurements;
import dev.panamavmm.kvm.generator.CProbe.StructFacts;
import dev.panamavmm.kvm.generator.Declarations.Struct;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;

/**
 * One struct as a tree of measured members: groups (nested structs and unions, named or
 * anonymous) and leaves (declared fields). Building it checks that the declared fields explain
 * every byte: a gap that alignment does not account for means a field is missing from the
 * declaration list, and is an error.
 */
final class LayoutTree {

    sealed interface Node permits Leaf, Group {
        String name();

        long offset();

        long size();

        long alignment();
        /** Alignment the C compiler gives the member outside a packed struct (for tail padding). */
        long naturalAlignment();
    }

    record Leaf(String name, FieldFacts facts, long alignment, long naturalAlignment, List<String> path)
            implements Node {
        public long offset() {
            return facts.offset();
        }

        public long size() {
            return facts.elementSize() * facts.count();
        }
    }

    static final class Group implements Node {
        final String name;
        final boolean anonymous;
        final List<String> path;
        /** C member names leading here; an anonymous union ends with its Java-only name. */
        final List<String> names;

        final List<Node> children = new ArrayList<>();
        long offset = -1;
        long size = -1;
        boolean union;

        Group(String name, boolean anonymous, List<String> path, List<String> names) {
            this.name = name;
            this.anonymous = anonymous;
            this.path = path;
            this.names = names;
        }

        public String name() {
            return name;
        }

        public long offset() {
            return offset;
        }

        public long size() {
            return size;
        }

        public long alignment() {
            long a = 1;
            for (var c : children) a = Math.max(a, c.alignment());
            return a;
        }

        public long naturalAlignment() {
            long a = 1;
            for (var c : children) a = Math.max(a, c.naturalAlignment());
            return a;
        }

        /** Children in address order (stable for equal offsets). */
        List<Node> ordered() {
            var list = new ArrayList<>(children);
            list.sort(Comparator.comparingLong(Node::offset));
            return list;
        }
    }

    final Struct struct;
    final StructFacts facts;
    final Group root;

    LayoutTree(Struct struct, Measurements m) {
        this.struct = struct;
        this.facts = m.structs().get(struct.cName());
        this.root = new Group(struct.cName(), false, List.of(), List.of());
        for (var f : facts.fields()) insert(f, m);
        finish(root, true);
        if (root.alignment() != facts.alignment()) {
            throw new IllegalStateException("struct " + struct.cName() + ": the declared members align to "
                    + root.alignment() + " but C aligns the struct to " + facts.alignment()
                    + " (declare the member that needs it)");
        }
    }

    private void insert(FieldFacts f, Measurements m) {
        Group g = root;
        var path = new ArrayList<String>();
        var designator = new StringBuilder();
        var names = new ArrayList<String>();
        var parts = f.field().path();
        for (int i = 0; i < parts.size() - 1; i++) {
            var part = parts.get(i);
            path.add(part.name());
            if (!part.anonymous()) {
                if (!designator.isEmpty()) designator.append('.');
                designator.append(part.name());
                names.add(part.name());
            }
            Group next = null;
            for (var c : g.children) {
                if (c instanceof Group cg && cg.name.equals(part.name())) next = cg;
            }
            if (next == null) {
                var groupNames = new ArrayList<>(names);
                if (part.anonymous()) groupNames.add(part.name());
                next = new Group(part.name(), part.anonymous(), List.copyOf(path), List.copyOf(groupNames));
                if (!part.anonymous()) {
                    var gf = facts.groups().get(designator.toString());
                    next.offset = gf.offset();
                    next.size = gf.size();
                }
                g.children.add(next);
            }
            g = next;
        }
        var leafName = parts.getLast().name();
        path.add(leafName);
        g.children.add(new Leaf(leafName, f, leafAlignment(f, m), naturalAlignment(f, m), List.copyOf(path)));
    }

    private static long naturalAlignment(FieldFacts f, Measurements m) {
        return f.field().primitive() != null
                ? f.field().primitive().size
                : m.structs().get(f.field().structType()).alignment();
    }

    /** Natural alignment, limited by the struct's own (packed structs align to 1). */
    private long leafAlignment(FieldFacts f, Measurements m) {
        long natural = naturalAlignment(f, m);
        long a = Math.min(natural, facts.alignment());
        if (f.offset() % a != 0) a = 1;
        if (f.field().primitive() == null && a < natural) {
            throw new IllegalStateException(where(f) + ": nested struct is not naturally aligned here");
        }
        return a;
    }

    private void finish(Group g, boolean isRoot) {
        for (var c : g.children) if (c instanceof Group cg) finish(cg, false);
        if (isRoot) {
            g.offset = 0;
            g.size = facts.size();
        } else if (g.anonymous) {
            g.offset = g.children.stream().mapToLong(Node::offset).min().orElseThrow();
            g.size = g.children.stream()
                            .mapToLong(n -> n.offset() + n.size())
                            .max()
                            .orElseThrow()
                    - g.offset;
        }
        var ordered = g.ordered();
        boolean disjoint = true;
        for (int i = 1; i < ordered.size(); i++) {
            var prev = ordered.get(i - 1);
            if (prev.offset() + prev.size() > ordered.get(i).offset()) disjoint = false;
        }
        boolean sameStart = ordered.stream().allMatch(n -> n.offset() == g.offset);
        if (disjoint) {
            g.union = false;
            long cursor = g.offset;
            for (var c : ordered) {
                if (alignUp(cursor, c.alignment()) != c.offset()) {
                    throw new IllegalStateException(
                            "struct " + struct.cName() + ": " + (c.offset() - cursor) + " undeclared bytes before '"
                                    + String.join(".", pathOf(c)) + "' (declare the missing fields)");
                }
                cursor = c.offset() + c.size();
            }
            long end = g.offset + g.size;
            long align = isRoot ? facts.alignment() : g.naturalAlignment();
            if (alignUp(cursor, align) != end) {
                throw new IllegalStateException(
                        "struct " + struct.cName() + ": " + (end - cursor) + " undeclared bytes at the end of '"
                                + (isRoot ? struct.cName() : String.join(".", g.path)) + "'");
            }
        } else if (sameStart && ordered.size() > 1) {
            g.union = true;
            long widest = ordered.stream().mapToLong(Node::size).max().orElseThrow();
            if (widest != g.size) {
                throw new IllegalStateException(
                        "struct " + struct.cName() + ": union '" + String.join(".", g.path) + "' is " + g.size
                                + " bytes but its declared members cover " + widest + " (declare its widest member)");
            }
        } else {
            throw new IllegalStateException("struct " + struct.cName() + ": members of '"
                    + (isRoot ? struct.cName() : String.join(".", g.path))
                    + "' overlap: name the anonymous union they share, e.g. (u).member");
        }
    }

    private static List<String> pathOf(Node n) {
        return n instanceof Leaf l ? l.path() : ((Group) n).path;
    }

    private String where(FieldFacts f) {
        return "struct " + struct.cName() + "." + f.field().declaredPath();
    }

    static long alignUp(long v, long a) {
        return (v + a - 1) / a * a;
    }
}
