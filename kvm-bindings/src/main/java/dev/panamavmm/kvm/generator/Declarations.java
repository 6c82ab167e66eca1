package dev.panamavmm.kvm.generator;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;

/**
 * The parsed declaration list ({@code bindings.decl}): which headers, structs, constants and
 * ioctls the bindings cover. It states names and types only; every number comes from the probe.
 */
public record Declarations(
        List<String> includes, List<Struct> structs, Map<String, List<Constant>> constantClasses, List<String> ioctls) {

    /** A primitive field type of the declaration language and the C type it must match. */
    public enum Primitive {
        U8("__u8", 1),
        S8("__s8", 1),
        CHAR("char", 1),
        U16("__u16", 2),
        S16("__s16", 2),
        U32("__u32", 4),
        S32("__s32", 4),
        INT("int", 4),
        U64("__u64", 8),
        S64("__s64", 8),
        ULONG("unsigned long", 8),
        LONG("long", 8),
        PTR("void *", 8);

        public final String cType;
        public final int size;

        Primitive(String cType, int size) {
            this.cType = cType;
            this.size = size;
        }

        public boolean unsigned() {
            return this == U8 || this == U16 || this == U32 || this == U64 || this == ULONG;
        }

        static Primitive byName(String name) {
            for (var p : values()) {
                if (p.name().equalsIgnoreCase(name)) return p;
            }
            return null;
        }
    }

    public enum ArrayKind {
        NONE,
        MEASURED,
        FLEXIBLE
    }

    /** One component of a field path; {@code anonymous} marks a C anonymous union named for Java. */
    public record PathPart(String name, boolean anonymous) {}

    /**
     * A declared field: either a primitive or a struct declared earlier ({@code structType}).
     * An {@code opaque} field is the C member's bytes whatever its type (a u8 array of its size).
     */
    public record Field(Primitive primitive, String structType, List<PathPart> path, ArrayKind array, boolean opaque) {
        /** The C member designator for offsetof: the path without the Java-only union names. */
        public String designator() {
            var sb = new StringBuilder();
            for (var part : path) {
                if (part.anonymous()) continue;
                if (!sb.isEmpty()) sb.append('.');
                sb.append(part.name());
            }
            return sb.toString();
        }

        /** The path's C member names (anonymous unions left out): what Java names are made from. */
        public List<String> cNames() {
            return path.stream().filter(p -> !p.anonymous()).map(PathPart::name).toList();
        }

        public String declaredPath() {
            var sb = new StringBuilder();
            for (var part : path) {
                if (!sb.isEmpty()) sb.append('.');
                sb.append(part.anonymous() ? "(" + part.name() + ")" : part.name());
            }
            return sb.toString();
        }
    }

    public record Struct(String cName, String javaName, List<Field> fields) {}

    /** An integer constant: a macro or enum of the same name, or an explicit C expression. */
    public record Constant(String name, String cExpression) {}

    private static final Pattern IDENT = Pattern.compile("[A-Za-z_][A-Za-z0-9_]*");
    private static final Pattern FIELD = Pattern.compile(
            "((?:\\([A-Za-z_][A-Za-z0-9_]*\\)\\.|[A-Za-z_][A-Za-z0-9_]*\\.)*)([A-Za-z_][A-Za-z0-9_]*)(\\[\\*?\\])?");

    public static Declarations read(Path file) throws IOException {
        return parse(Files.readAllLines(file), file.getFileName().toString());
    }

    public static Declarations parse(List<String> lines, String source) {
        var includes = new ArrayList<String>();
        var structs = new ArrayList<Struct>();
        var constants = new LinkedHashMap<String, List<Constant>>();
        var ioctls = new ArrayList<String>();
        var structNames = new LinkedHashMap<String, Struct>();

        List<Field> currentFields = null;
        List<Constant> currentConstants = null;
        boolean inIoctls = false;

        for (int i = 0; i < lines.size(); i++) {
            String raw = lines.get(i);
            int hash = raw.indexOf('#');
            String line = (hash >= 0 ? raw.substring(0, hash) : raw).stripTrailing();
            if (line.isBlank()) continue;
            String where = source + ":" + (i + 1);
            boolean indented = Character.isWhitespace(line.charAt(0));
            String[] words = line.trim().split("\\s+");

            if (!indented) {
                currentFields = null;
                currentConstants = null;
                inIoctls = false;
                switch (words[0]) {
                    case "include" ->
                        includes.add(line.trim().substring("include".length()).trim());
                    case "struct" -> {
                        if (words.length != 2) throw new IllegalArgumentException(where + ": expected 'struct NAME'");
                        currentFields = new ArrayList<>();
                        var struct = new Struct(words[1], javaClassName(words[1]), currentFields);
                        if (structNames.put(words[1], struct) != null) {
                            throw new IllegalArgumentException(where + ": struct " + words[1] + " declared twice");
                        }
                        structs.add(struct);
                    }
                    case "constants" -> {
                        if (words.length != 2)
                            throw new IllegalArgumentException(where + ": expected 'constants CLASS'");
                        currentConstants = constants.computeIfAbsent(words[1], k -> new ArrayList<>());
                    }
                    case "ioctls" -> inIoctls = true;
                    default -> throw new IllegalArgumentException(where + ": unknown directive '" + words[0] + "'");
                }
                continue;
            }

            if (currentFields != null) {
                String type = words[0];
                boolean opaque = type.equals("opaque");
                Primitive primitive = opaque ? Primitive.U8 : Primitive.byName(type);
                if (primitive == null && !structNames.containsKey(type)) {
                    throw new IllegalArgumentException(
                            where + ": unknown type '" + type + "' (declare the struct above its use)");
                }
                for (int w = 1; w < words.length; w++) {
                    var field = parseField(primitive, primitive == null ? type : null, words[w], where);
                    if (opaque) {
                        if (field.array() != ArrayKind.NONE)
                            throw new IllegalArgumentException(where + ": an opaque field takes no []");
                        field = new Field(Primitive.U8, null, field.path(), ArrayKind.MEASURED, true);
                    }
                    currentFields.add(field);
                }
            } else if (currentConstants != null) {
                String text = line.trim();
                int eq = text.indexOf('=');
                if (eq >= 0) {
                    String name = text.substring(0, eq).trim();
                    requireIdent(name, where);
                    currentConstants.add(
                            new Constant(name, text.substring(eq + 1).trim()));
                } else {
                    for (var word : words) {
                        requireIdent(word, where);
                        currentConstants.add(new Constant(word, word));
                    }
                }
            } else if (inIoctls) {
                for (var word : words) {
                    requireIdent(word, where);
                    ioctls.add(word);
                }
            } else {
                throw new IllegalArgumentException(
                        where + ": indented line outside a struct, constants or ioctls block");
            }
        }
        return new Declarations(List.copyOf(includes), List.copyOf(structs), constants, List.copyOf(ioctls));
    }

    private static Field parseField(Primitive primitive, String structType, String text, String where) {
        var m = FIELD.matcher(text);
        if (!m.matches()) throw new IllegalArgumentException(where + ": bad field '" + text + "'");
        var path = new ArrayList<PathPart>();
        String prefix = m.group(1);
        if (!prefix.isEmpty()) {
            for (var part : prefix.substring(0, prefix.length() - 1).split("\\.")) {
                boolean anonymous = part.startsWith("(");
                path.add(new PathPart(anonymous ? part.substring(1, part.length() - 1) : part, anonymous));
            }
        }
        path.add(new PathPart(m.group(2), false));
        ArrayKind array = m.group(3) == null
                ? ArrayKind.NONE
                : m.group(3).equals("[*]") ? ArrayKind.FLEXIBLE : ArrayKind.MEASURED;
        return new Field(primitive, structType, List.copyOf(path), array, false);
    }

    private static void requireIdent(String word, String where) {
        if (!IDENT.matcher(word).matches()) throw new IllegalArgumentException(where + ": bad name '" + word + "'");
    }

    /** {@code kvm_cpuid_entry2} -> {@code KvmCpuidEntry2}. */
    static String javaClassName(String cName) {
        var sb = new StringBuilder();
        for (var part : cName.split("_")) {
            if (part.isEmpty()) continue;
            sb.append(Character.toUpperCase(part.charAt(0))).append(part.substring(1));
        }
        return sb.toString();
    }
}
