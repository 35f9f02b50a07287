// File input shared by the C check programs (mlwq-check, mlwq-exact, mlwq-fuzz-run): a whole file
// into memory, and every file under a path (directories walked in sorted order, dot files skipped).
// Any I/O failure exits with status 2 and a one-line message. The walk uses POSIX scandir, declared
// in GNU C modes only (mlwq-check is built as strict C11 and reads single files).
#pragma once

#include <stdio.h>
#include <stdlib.h>

static void * read_file(const char * path, size_t * size) {
    FILE * f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "cannot open %s\n", path); exit(2); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void * buf = malloc(n > 0 ? (size_t) n : 1);
    if (n > 0 && fread(buf, 1, (size_t) n, f) != (size_t) n) { fprintf(stderr, "cannot read %s\n", path); exit(2); }
    fclose(f);
    *size = (size_t) n;
    return buf;
}

#ifndef __STRICT_ANSI__
#include <dirent.h>
#include <sys/stat.h>

static void for_each_file(const char * path, void (*fn)(const char * file)) {
    struct stat st;
    if (stat(path, &st) != 0) { fprintf(stderr, "cannot stat %s\n", path); exit(2); }
    if (!S_ISDIR(st.st_mode)) {
        fn(path);
        return;
    }
    struct dirent ** names;
    const int n = scandir(path, &names, NULL, alphasort);
    if (n < 0) { fprintf(stderr, "cannot list %s\n", path); exit(2); }
    for (int i = 0; i < n; ++i) {
        if (names[i]->d_name[0] != '.') {
            char full[4096];
            snprintf(full, sizeof(full), "%s/%s", path, names[i]->d_name);
            for_each_file(full, fn);
        }
        free(names[i]);
    }
    free(names);
}
#endif
