# Sourced by ./mvnw and ./vmm: sets PANAMA_JAVA_HOME to a JDK >= 25 or exits with one line.
# Order: $JAVA_HOME if new enough, then the JDKs under /usr/lib/jvm (newest first), then `java` on PATH.

panama_jdk_major() { # $1 = JDK home; prints its feature version or nothing
  local release="$1/release" v
  [ -x "$1/bin/java" ] || return 0
  if [ -r "$release" ]; then
    v=$(sed -n 's/^JAVA_VERSION="\([0-9]*\).*/\1/p' "$release")
  fi
  if [ -z "$v" ]; then
    v=$("$1/bin/java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = \([0-9]*\).*/\1/p')
  fi
  echo "$v"
}

panama_find_jdk() {
  local min=25 candidate major
  local candidates=()
  [ -n "${JAVA_HOME:-}" ] && candidates+=("$JAVA_HOME")
  for candidate in $(ls -d /usr/lib/jvm/*/ 2>/dev/null | sort -rV); do
    candidates+=("${candidate%/}")
  done
  if command -v java >/dev/null 2>&1; then
    candidates+=("$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")")
  fi
  for candidate in "${candidates[@]}"; do
    major=$(panama_jdk_major "$candidate")
    if [ -n "$major" ] && [ "$major" -ge "$min" ]; then
      PANAMA_JAVA_HOME="$candidate"
      return 0
    fi
  done
  echo "panama-vmm: no JDK >= $min found (looked at JAVA_HOME, /usr/lib/jvm, java on PATH); install JDK 25 or newer (e.g. Temurin 25) and Maven >= 3.8" >&2
  exit 1
}
