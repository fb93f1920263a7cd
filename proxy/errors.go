package proxy

import (
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// SQLSTATE codes pgtenant reports itself. Everything a client sees from
// pgtenant is an ErrorResponse shaped like PostgreSQL's own.
const (
	codeProtocolViolation        = "08P01"
	codeConnectionFailure        = "08006"
	codeUnableToConnect          = "08001"
	codeConnectionRejected       = "08004"
	codeFeatureNotSupported      = "0A000"
	codeInvalidAuthorization     = "28000"
	codeInsufficientPrivilege    = "42501"
	codeInvalidCatalogName       = "3D000"
	codeAdminShutdown            = "57P01"
	codeCannotConnectNow         = "57P03"
	codeIdleSessionTimeout       = "57P05"
	codeIdleInTransactionTimeout = "25P03"
	codeTooManyConnections       = "53300"
	codeConfigurationLimit       = "53400"
	codeQueryCanceled            = "57014"
	codeProgramLimitExceeded     = "54000"
	codeInternalError            = "XX000"
	codeInFailedTransaction      = "25P02"
	severityFatal                = "FATAL"
	severityError                = "ERROR"
)

// fatalf builds a client-facing FATAL error.
func fatalf(code, format string, args ...any) *pgconn.PgError {
	return &pgconn.PgError{Severity: severityFatal, Code: code, Message: fmt.Sprintf(format, args...)}
}

// errorResponse converts a PgError into the wire message.
func errorResponse(e *pgconn.PgError) *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{
		Severity:            e.Severity,
		SeverityUnlocalized: e.Severity,
		Code:                e.Code,
		Message:             e.Message,
		Detail:              e.Detail,
		Hint:                e.Hint,
	}
}
