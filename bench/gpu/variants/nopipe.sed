s|^#define MLWQ_PIPE 1 |#define MLWQ_PIPE 0 |
