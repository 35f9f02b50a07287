s/^#define MLWQ_MIN_CTAS 1 /#define MLWQ_MIN_CTAS 6 /
