/*
 * symbols.h — reads symbols.def's RG_GUARDED_n lines for its consumers.
 *
 * A consumer defines RG_GUARDED(required, type, name, family, TYPES,
 * FIELDS, PARAMS, ARGS, CALL_ARGS), RG_WRITTEN(required, type, name,
 * params) and RG_USED(required, type, name, params), then includes
 * symbols.def. The lists after `family` come in parentheses (unwrapped by
 * RG_UNPAREN), each starting with a comma when not empty:
 *   TYPES      , T1, T2           the parameter types after the session
 *   FIELDS     T1 a1; T2 a2;      the argument struct's fields
 *   PARAMS     , T1 a1, T2 a2     the parameter list after the session
 *   ARGS       , a1, a2           the arguments, passed on
 *   CALL_ARGS  , a->a1, a->a2     the same, read back from the struct
 */
#ifndef RG_SYMBOLS_H
#define RG_SYMBOLS_H

#define RG_UNPAREN(...) __VA_ARGS__

#define RG_GUARDED_0(req, type, name, family)                                      \
	RG_GUARDED(req, type, name, family, (), (), (), (), ())
#define RG_GUARDED_1(req, type, name, family, T1, a1)                              \
	RG_GUARDED(req, type, name, family, (, T1), (T1 a1;), (, T1 a1), (, a1), (, a->a1))
#define RG_GUARDED_2(req, type, name, family, T1, a1, T2, a2)                      \
	RG_GUARDED(req, type, name, family, (, T1, T2), (T1 a1; T2 a2;),             \
		   (, T1 a1, T2 a2), (, a1, a2), (, a->a1, a->a2))
#define RG_GUARDED_3(req, type, name, family, T1, a1, T2, a2, T3, a3)              \
	RG_GUARDED(req, type, name, family, (, T1, T2, T3), (T1 a1; T2 a2; T3 a3;),  \
		   (, T1 a1, T2 a2, T3 a3), (, a1, a2, a3), (, a->a1, a->a2, a->a3))
#define RG_GUARDED_4(req, type, name, family, T1, a1, T2, a2, T3, a3, T4, a4)      \
	RG_GUARDED(req, type, name, family, (, T1, T2, T3, T4),                      \
		   (T1 a1; T2 a2; T3 a3; T4 a4;), (, T1 a1, T2 a2, T3 a3, T4 a4),    \
		   (, a1, a2, a3, a4), (, a->a1, a->a2, a->a3, a->a4))

#endif
