package dev.panamavmm.migration.state;

/**
 * One field of a state section: its tag in a binary section (format 2) and its name in a JSON
 * section (format 1). A tag is never reused for another meaning, even after its field is dropped.
 */
public record Field(int tag, String name) {
    public Field {
        if (tag < 1 || tag > 0xFFFF) throw new IllegalArgumentException("field tag " + tag + " is not a u16 above 0");
    }
}
