package dev.panamavmm.api;

import java.util.List;

/** For tests in other packages: the commands {@link ApiServer} answers itself. */
public final class ApiServerAccess {
    private ApiServerAccess() {}

    public static List<String> ownCommands() {
        return ApiServer.OWN_COMMANDS;
    }
}
